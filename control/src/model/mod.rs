//! Config objects (written by the model helper).

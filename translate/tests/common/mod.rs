//! Helpers shared by the control plane's integration tests.

use mesh_model::{load_str, ConfigSet};

/// Loads `yaml` (which must have no errors) into a config set.
pub fn set_of(yaml: &str) -> ConfigSet {
    let (objects, diags) = load_str(yaml, None);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
    let mut set = ConfigSet::new();
    for o in objects {
        set.insert(o, None);
    }
    set
}

//! SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity {0:?} is not a SPIFFE URI: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    NotSpiffe(String),
    #[error("identity {0:?} has an empty trust domain, namespace or service account")]
    Empty(String),
}

/// A workload identity as carried in the URI SAN of its certificate.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::NotSpiffe(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                if td.is_empty() || ns.is_empty() || sa.is_empty() {
                    return Err(IdentityError::Empty(s.to_string()));
                }
                Ok(Identity::new(td, ns, sa))
            }
            _ => Err(IdentityError::NotSpiffe(s.to_string())),
        }
    }
}

impl TryFrom<String> for Identity {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Identity> for String {
    fn from(id: Identity) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "echo"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/echo");
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            "http://x/ns/a/sa/b".parse::<Identity>(),
            Err(IdentityError::NotSpiffe(_))
        ));
        assert!(matches!(
            "spiffe://td/ns/a".parse::<Identity>(),
            Err(IdentityError::NotSpiffe(_))
        ));
        assert!(matches!(
            "spiffe://td/ns//sa/b".parse::<Identity>(),
            Err(IdentityError::Empty(_))
        ));
    }
}

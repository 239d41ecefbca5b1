//! Contract versions: the values of `zen.common.v1.ContractVersion` in the descriptor set
//! (`CONTRACT_VERSION_V1` -> `v1`), so the contracts alone say which versions are supported.

use prost::Message;
use prost_types::FileDescriptorSet;

/// The metadata key clients use to state the contract version they speak.
pub const CONTRACT_VERSION_HEADER: &str = "x-zen-contract-version";

const ENUM_PACKAGE: &str = "zen.common.v1";
const ENUM_NAME: &str = "ContractVersion";
const VALUE_PREFIX: &str = "CONTRACT_VERSION_";

/// The supported contract versions, oldest first; the last is the current one.
#[derive(Clone, Debug)]
pub struct ContractVersions {
    supported: Vec<String>,
}

impl ContractVersions {
    /// Reads the supported versions from an encoded descriptor set.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, String> {
        let set = FileDescriptorSet::decode(bytes).map_err(|e| e.to_string())?;
        let supported: Vec<String> = set
            .file
            .iter()
            .filter(|file| file.package() == ENUM_PACKAGE)
            .flat_map(|file| file.enum_type.iter())
            .filter(|e| e.name() == ENUM_NAME)
            .flat_map(|e| e.value.iter())
            .filter(|value| value.number() != 0)
            .filter_map(|value| value.name().strip_prefix(VALUE_PREFIX))
            .map(str::to_ascii_lowercase)
            .collect();
        if supported.is_empty() {
            return Err(format!(
                "the contracts define no {ENUM_PACKAGE}.{ENUM_NAME} values"
            ));
        }
        Ok(Self { supported })
    }

    /// The version assumed when a caller states none.
    pub fn current(&self) -> &str {
        self.supported.last().expect("never empty")
    }

    pub fn supported(&self) -> &[String] {
        &self.supported
    }

    /// Resolves a stated version (none means current); `Err` names the supported ones.
    pub fn resolve(&self, stated: Option<&str>) -> Result<String, String> {
        match stated {
            None => Ok(self.current().to_owned()),
            Some(version) if self.supported.iter().any(|v| v == version) => Ok(version.to_owned()),
            Some(version) => Err(format!(
                "unsupported contract version `{}` in {CONTRACT_VERSION_HEADER}; supported: {}",
                version.chars().take(64).collect::<String>(),
                self.supported.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_contracts() {
        let versions =
            ContractVersions::from_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        assert_eq!(versions.current(), "v1");
        assert_eq!(versions.resolve(None).unwrap(), "v1");
        assert_eq!(versions.resolve(Some("v1")).unwrap(), "v1");
        let err = versions.resolve(Some("v0")).unwrap_err();
        assert!(err.contains("supported: v1"), "{err}");
    }
}

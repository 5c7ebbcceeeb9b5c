//! `[authorization]`: where the three topic-space lists are and whether their decisions are
//! enforced or only audited (SPEC §11, §12). The lists themselves are read by
//! [`crate::authz::Authz::load`] as part of the trust state, so they reload with it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorization {
    client_groups: Option<PathBuf>,
    topic_spaces: Option<PathBuf>,
    permission_bindings: Option<PathBuf>,
    mode: Option<String>,
}

/// What a denial does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzMode {
    /// A denied PUBLISH or SUBSCRIBE filter never reaches the broker.
    Enforce,
    /// Every decision is made, logged and counted (`would_deny`), and the packet passes:
    /// for rolling authorization out in front of a fleet that already runs.
    Audit,
}

impl AuthzMode {
    /// The metric label of a denial in this mode.
    pub fn denied_label(self) -> &'static str {
        match self {
            AuthzMode::Enforce => "denied",
            AuthzMode::Audit => "would_deny",
        }
    }
}

/// `[authorization]`, validated; paths resolved against the configuration's folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub client_groups: PathBuf,
    pub topic_spaces: PathBuf,
    pub permission_bindings: PathBuf,
    pub mode: AuthzMode,
}

impl Authorization {
    pub fn files(&self) -> crate::authz::Files<'_> {
        crate::authz::Files {
            client_groups: &self.client_groups,
            topic_spaces: &self.topic_spaces,
            permission_bindings: &self.permission_bindings,
        }
    }

    pub fn paths(&self) -> [PathBuf; 3] {
        [
            self.client_groups.clone(),
            self.topic_spaces.clone(),
            self.permission_bindings.clone(),
        ]
    }
}

impl RawAuthorization {
    /// All three files are required: a section with one missing would authorize against
    /// a model the operator did not write. Errors are `(field, message)`.
    pub(super) fn validate(
        self,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Authorization, (&'static str, String)> {
        let required = |field: &'static str, p: Option<PathBuf>| {
            p.map(|p| resolve(&p))
                .ok_or((field, "required in [authorization]".to_string()))
        };
        Ok(Authorization {
            client_groups: required("authorization.client_groups", self.client_groups)?,
            topic_spaces: required("authorization.topic_spaces", self.topic_spaces)?,
            permission_bindings: required(
                "authorization.permission_bindings",
                self.permission_bindings,
            )?,
            mode: match self.mode.as_deref() {
                None | Some("enforce") => AuthzMode::Enforce,
                Some("audit") => AuthzMode::Audit,
                Some(other) => {
                    return Err((
                        "authorization.mode",
                        format!("{other:?} is not \"enforce\" or \"audit\""),
                    ))
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{AuthzMode, Config};
    use std::path::Path;

    const MINIMAL: &str = "[tls]\ncertificate = \"s.pem\"\nprivate_key = \"s.key\"\n[registry]\nclients = \"c.json\"\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::from_toml(
            &format!("{MINIMAL}{extra}"),
            Path::new("/etc/mqttgate/mqttgate.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn authorization_is_off_without_the_section() {
        assert_eq!(parse("").unwrap().authorization, None);
    }

    #[test]
    fn the_three_files_resolve_against_the_config_folder_and_enforce_by_default() {
        let c = parse("[authorization]\nclient_groups = \"g.json\"\ntopic_spaces = \"/x/t.json\"\npermission_bindings = \"b.json\"\n").unwrap();
        let a = c.authorization.clone().unwrap();
        assert_eq!(a.client_groups, Path::new("/etc/mqttgate/g.json"));
        assert_eq!(a.topic_spaces, Path::new("/x/t.json"));
        assert_eq!(a.mode, AuthzMode::Enforce);
        assert!(c
            .watched_files()
            .contains(&Path::new("/etc/mqttgate/b.json").to_path_buf()));
    }

    #[test]
    fn a_missing_file_or_bad_mode_names_the_field() {
        let err = parse("[authorization]\nclient_groups = \"g.json\"\ntopic_spaces = \"t.json\"\n")
            .unwrap_err();
        assert!(
            err.starts_with("/etc/mqttgate/mqttgate.toml: authorization.permission_bindings:"),
            "{err}"
        );
        let err = parse("[authorization]\nclient_groups = \"g\"\ntopic_spaces = \"t\"\npermission_bindings = \"b\"\nmode = \"log\"\n").unwrap_err();
        assert!(err.contains("authorization.mode:"), "{err}");
        let audit = parse("[authorization]\nclient_groups = \"g\"\ntopic_spaces = \"t\"\npermission_bindings = \"b\"\nmode = \"audit\"\n").unwrap();
        assert_eq!(audit.authorization.unwrap().mode, AuthzMode::Audit);
    }
}

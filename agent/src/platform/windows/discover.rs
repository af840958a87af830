//! `discover: windows`: which services the SCM lists custos follows on its
//! own, named after their service names.
//!
//! Only services in a process of their own: services sharing a process
//! (most of Windows' own, in svchost.exe) cannot be told apart by process
//! tree, so attributing that process to one of them would be wrong.

use crate::config::{LoadedConfig, Selector};

/// `(config name, SCM service name)` of every `windows_service` selector.
pub fn windows_services(config: &LoadedConfig) -> Vec<(String, String)> {
    config
        .services
        .iter()
        .filter_map(|s| match &s.selector {
            Selector::WindowsService(scm) => Some((s.name.clone(), scm.clone())),
            _ => None,
        })
        .collect()
}

/// One service as `EnumServicesStatusExW` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedService {
    pub name: String,
    /// `SERVICE_WIN32_OWN_PROCESS` (not sharing its process).
    pub own_process: bool,
    /// The process, while it runs.
    pub pid: Option<u32>,
}

/// The discovered services to follow, with their pids: own-process ones,
/// except custos itself and services the configuration names explicitly
/// (`explicit` holds their SCM names, compared case-insensitively like the
/// SCM does).
pub fn discovered<'a>(
    listed: &'a [ListedService],
    explicit: &[String],
    custos_service: &str,
) -> Vec<(&'a str, Option<u32>)> {
    listed
        .iter()
        .filter(|s| s.own_process)
        .filter(|s| !s.name.eq_ignore_ascii_case(custos_service))
        .filter(|s| !explicit.iter().any(|e| e.eq_ignore_ascii_case(&s.name)))
        .map(|s| (s.name.as_str(), s.pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, own_process: bool, pid: Option<u32>) -> ListedService {
        ListedService { name: name.to_string(), own_process, pid }
    }

    #[test]
    fn windows_service_selectors_are_followed_by_config_name() {
        let text = "services:\n  - name: api\n    windows_service: Api\n  - name: web\n    exe: 'C:\\web\\web.exe'\n  - discover: windows\n";
        let c = crate::config::parse(text, "x").unwrap();
        assert_eq!(windows_services(&c), [("api".to_string(), "Api".to_string())]);
        assert_eq!(c.discover, [crate::config::Discover::Windows]);
    }

    #[test]
    fn own_process_services_are_discovered_except_custos_and_configured_ones() {
        let listed = [
            svc("Api", true, Some(100)),
            svc("Dnscache", false, Some(900)),
            svc("Spooler", true, None),
            svc("custos", true, Some(5)),
            svc("DB", true, Some(200)),
        ];
        let got = discovered(&listed, &["db".to_string()], "Custos");
        assert_eq!(got, [("Api", Some(100)), ("Spooler", None)]);
    }
}

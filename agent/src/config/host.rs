//! The configuration checked against this host: every `systemd_unit` and
//! `windows_service` must be a unit the service manager knows. A misspelled
//! unit would otherwise validate, never match a process and show its state
//! as `-` forever. `validate` and `reload` refuse such a configuration;
//! `run` logs it and goes on (the unit may be installed later). When the
//! manager cannot be asked (no systemd, another host's configuration), the
//! check is skipped and `validate` says so.

use super::normalize_unit;
use super::validate::LoadedConfig;
use crate::service_manager::{Known, UnitLookup};
use crate::yaml::{LocatedError, Problems};

/// The configured units `units` does not know, each at its place.
pub fn check_units(config: &LoadedConfig, units: &UnitLookup) -> Vec<LocatedError> {
    let source =
        config.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "embedded default".into());
    let mut p = Problems::new(&source);
    for entry in &config.raw.services {
        let (key, unit, spanned) = match (&entry.systemd_unit, &entry.windows_service) {
            (Some(u), _) => ("systemd_unit", normalize_unit(&u.value), u),
            (None, Some(w)) => ("windows_service", w.value.clone(), w),
            _ => continue,
        };
        if units.exists(&unit) == Known::No {
            p.at(
                spanned.referenced,
                format!(
                    "`{key}`: {} knows no unit `{unit}` (misspelled, or not installed yet?)",
                    units.manager()
                ),
            );
        }
    }
    p.into_errors().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_manager::KnownUnits;

    #[test]
    fn a_unit_the_manager_does_not_know_is_an_error_at_its_line() {
        let c = crate::config::parse(
            "services:\n  - name: web\n    systemd_unit: web\n  - name: typo\n    systemd_unit: wbe.service\n",
            "custos.yaml",
        )
        .unwrap();
        let units = UnitLookup::new(std::sync::Arc::new(KnownUnits(vec!["web.service"])));
        let e = check_units(&c, &units);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].column), (5, 19), "{e:?}");
        assert!(e[0].message.contains("systemd knows no unit `wbe.service`"), "{e:?}");
    }
}

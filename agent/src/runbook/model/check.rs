//! Runbooks checked against what they run under: a runbook for a service
//! the configuration does not manage (and, under `discover:`, no unit of
//! that name exists), or a `health: failing` trigger on a service without
//! a probe, would load, stay armed and never fire. These are errors at
//! their place, like any other; the runbook is skipped at start and a
//! reload containing it is rejected.

use super::load::LoadReport;
use super::shape::Runbook;
use crate::config::{normalize_unit, LoadedConfig};
use crate::service_manager::{Known, UnitLookup};
use crate::yaml::{LocatedError, Location};

fn problem(rb: &Runbook, at: Location, message: String) -> LocatedError {
    LocatedError { source: rb.source.clone(), line: at.line(), column: at.column(), message }
}

/// Why `rb` cannot run under `config`, if it cannot.
pub fn check_runbook(rb: &Runbook, config: &LoadedConfig, units: &UnitLookup) -> Vec<LocatedError> {
    let mut errors = Vec::new();
    let service = config.services.iter().find(|s| s.name == rb.service);
    let probed = service.is_some_and(|s| s.health.is_some());
    if service.is_none() && !config.manages_everything() {
        let unit = normalize_unit(&rb.service);
        let discovered = !config.discover.is_empty();
        // Under `discover:` any unit the manager knows (or may know: it
        // could not be asked) is a service.
        let exists = discovered && units.exists(&unit) != Known::No;
        if !exists {
            let configured: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
            let mut message = format!(
                "service `{}` is not one of the configured services ({})",
                rb.service,
                if configured.is_empty() { "none".to_string() } else { configured.join(", ") }
            );
            if discovered {
                message.push_str(&format!(" and {} knows no unit `{unit}`", units.manager()));
            }
            message.push_str(": this runbook would never fire");
            errors.push(problem(rb, rb.places.service, message));
        }
    }
    if let Some(at) = rb.places.health {
        if !probed {
            errors.push(problem(
                rb,
                at,
                format!(
                    "`health: failing` can never fire: service `{}` has no `health:` probe in the configuration (add one to its entry under `services:`)",
                    rb.service
                ),
            ));
        }
    }
    errors
}

/// Moves every runbook of `report` that cannot run under `config` to its
/// errors.
pub fn check_against(report: &mut LoadReport, config: &LoadedConfig, units: &UnitLookup) {
    let runbooks = std::mem::take(&mut report.runbooks);
    for rb in runbooks {
        let errors = check_runbook(&rb, config, units);
        if errors.is_empty() {
            report.runbooks.push(rb);
        } else {
            report.errors.extend(errors);
        }
    }
}

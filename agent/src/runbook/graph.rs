//! `custos runbook graph`: a runbook as a Mermaid flowchart of its trigger,
//! ladder steps, verification, cooldown and escalation.

use super::model::Runbook;
use std::fmt::Write;

/// Quotes text for a Mermaid node label.
fn label(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "#quot;"))
}

pub fn mermaid(rb: &Runbook) -> String {
    let mut g = String::from("flowchart TD\n");
    let _ = writeln!(g, "  T[{}]", label(&format!("trigger: {}", rb.trigger.describe())));
    let mut gate = format!("cooldown {}", humantime::format_duration(rb.cooldown));
    if let Some(m) = rb.max_actions {
        let _ = write!(gate, ", breaker {} per {}", m.count, humantime::format_duration(m.per));
    }
    let _ = writeln!(g, "  G{{{}}}", label(&gate));
    let _ = writeln!(g, "  T --> G");
    let _ = writeln!(g, "  G -- cooling down --> S([{}])", label("suppressed, audited"));
    let n = rb.steps.len();
    for (i, step) in rb.steps.iter().enumerate() {
        let mut text = format!("step {}: {}", i + 1, step.action.describe());
        if !step.delay.is_zero() {
            let _ = write!(text, " after {}", humantime::format_duration(step.delay));
        }
        let _ = writeln!(g, "  S{i}[{}]", label(&text));
        let firing = if i + 1 == n { format!("firing ≥ {}", i + 1) } else { format!("firing {}", i + 1) };
        let _ = writeln!(g, "  G -- {} --> S{i}", label(&firing));
        if let Some(v) = step.verify {
            let _ = writeln!(
                g,
                "  V{i}{{{}}}",
                label(&format!("healthy within {}?", humantime::format_duration(v.healthy_within)))
            );
            let _ = writeln!(g, "  S{i} --> V{i}");
            let _ = writeln!(g, "  V{i} -- yes --> H([healed])");
            let next = if i + 1 < n { format!("S{}", i + 1) } else { format!("S{i}") };
            let _ = writeln!(g, "  V{i} -. not healed: next firing .-> {next}");
        }
    }
    if let Some(m) = rb.max_actions {
        let esc = rb
            .escalate
            .as_ref()
            .map(|s| format!("breaker open: {}", s.action.describe()))
            .unwrap_or_else(|| "breaker open: stop acting, audit".into());
        let _ = writeln!(g, "  E[{}]", label(&esc));
        let _ = writeln!(
            g,
            "  G -- {} --> E",
            label(&format!("{} actions within {}", m.count, humantime::format_duration(m.per)))
        );
    }
    if let Some(r) = rb.reset_after {
        let _ = writeln!(
            g,
            "  H -. {} .-> T",
            label(&format!("quiet {}: ladder resets", humantime::format_duration(r)))
        );
    }
    g
}

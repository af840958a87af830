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
    let m = rb.max_actions;
    let gate = format!("breaker {} per {}", m.count, humantime::format_duration(m.per));
    let _ = writeln!(g, "  G{{{}}}", label(&gate));
    let _ = writeln!(g, "  T --> G");
    let _ = writeln!(
        g,
        "  G -- {} --> S([{}])",
        label("a step runs, or cooling down"),
        label(&format!("held: acted on when it ends (cooldown {})", humantime::format_duration(rb.cooldown)))
    );
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
            let next = if i + 1 < n { format!("S{}", i + 1) } else { "X".to_string() };
            let _ = writeln!(g, "  V{i} -- not healed: at once --> {next}");
        }
    }
    let esc = rb
        .escalate
        .as_ref()
        .map(|s| format!("escalation: {}", s.action.describe()))
        .unwrap_or_else(|| "no escalation".into());
    let _ = writeln!(g, "  X[{}]", label(&format!("ladder exhausted; {esc}")));
    let _ = writeln!(g, "  E[{}]", label(&format!("breaker open: stop acting; {esc}")));
    let _ = writeln!(
        g,
        "  G -- {} --> E",
        label(&format!("{} actions within {}", m.count, humantime::format_duration(m.per)))
    );
    let _ = writeln!(
        g,
        "  H -. {} .-> T",
        label(&format!("quiet {}: ladder resets", humantime::format_duration(rb.reset_after)))
    );
    g
}

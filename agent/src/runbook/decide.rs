//! The choice a firing makes: which step of the ladder runs, or why none
//! does (an execution in progress, cooldown, an open circuit breaker), and
//! the runbook state that results. A pure function of the runbook, its
//! state and the time, so that every branch is tested without actions,
//! audit or files; the engine does the I/O around it.

use super::model::{MaxActions, Runbook, Step};
use super::state::RunbookState;
use std::time::{Duration, SystemTime};

/// What a firing's decision looks at besides the runbook and the time.
#[derive(Debug, Clone, Copy)]
pub struct State<'a> {
    /// The runbook's ladder position, cooldown and breaker, as saved;
    /// `None` before its first firing.
    pub saved: Option<&'a RunbookState>,
    /// An execution for the runbook's service is in progress.
    pub busy: bool,
}

/// What a firing does.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The ladder went back to step 1 after no firing for this long.
    pub ladder_reset: Option<Duration>,
    /// The breaker closed: the action window has room again.
    pub breaker_closed: bool,
    /// The runbook's state after this firing; `None` leaves it as it was.
    pub next: Option<RunbookState>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing runs: an execution for the service is in progress.
    Busy,
    /// Nothing runs: the last action's cooldown lasts until `until`.
    CoolingDown { until: SystemTime },
    /// Nothing runs: the breaker is open and the action window still full.
    BreakerOpen,
    /// The action window is full: the breaker opens and custos stops acting
    /// on the service; the escalation step, if any, runs once.
    OpenBreaker { max: MaxActions, escalate: Option<Step> },
    /// Step `index` (0-based) of the ladder runs.
    Run { index: usize, step: Step },
}

impl Verdict {
    /// Whether the new state must reach the disk before anything runs: an
    /// action (or the breaker opening) must not be forgotten by a restart,
    /// while a suppressed firing changes nothing worth a write.
    pub fn saves(&self) -> bool {
        matches!(self, Verdict::Run { .. } | Verdict::OpenBreaker { .. })
    }
}

/// Decides a firing of `rb` at `now`.
///
/// In order: a busy service or a running cooldown suppress the firing and
/// change nothing; a quiet period of `reset_after` sends the ladder back to
/// step 1; actions older than `max_actions.per` leave the breaker's window,
/// and a full window opens the breaker (or keeps it open); otherwise the
/// step at the ladder's position runs (the last one again once the ladder
/// is climbed) and the cooldown starts after its delay.
pub fn decide(rb: &Runbook, state: &State<'_>, now: SystemTime) -> Decision {
    let unchanged = |verdict| Decision { verdict, ladder_reset: None, breaker_closed: false, next: None };
    if state.busy {
        return unchanged(Verdict::Busy);
    }
    let mut st = state.saved.cloned().unwrap_or_default();
    if let Some(until) = st.cooldown_until.filter(|u| now < *u) {
        return unchanged(Verdict::CoolingDown { until });
    }
    let mut ladder_reset = None;
    if let (Some(reset), Some(last)) = (rb.reset_after, st.last_fire) {
        if st.position > 0 && elapsed(last, now) >= reset {
            st.position = 0;
            ladder_reset = Some(reset);
        }
    }
    let mut breaker_closed = false;
    if let Some(max) = rb.max_actions {
        while st.action_times.front().is_some_and(|t| elapsed(*t, now) >= max.per) {
            st.action_times.pop_front();
        }
        if st.action_times.len() >= max.count as usize {
            let verdict = if st.breaker_open {
                Verdict::BreakerOpen
            } else {
                st.breaker_open = true;
                st.last_fire = Some(now);
                Verdict::OpenBreaker { max, escalate: rb.escalate.clone() }
            };
            return Decision { verdict, ladder_reset, breaker_closed, next: Some(st) };
        }
        if st.breaker_open {
            st.breaker_open = false;
            breaker_closed = true;
        }
    }
    let index = st.position.min(rb.steps.len() - 1);
    let step = rb.steps[index].clone();
    st.position = (index + 1).min(rb.steps.len());
    st.last_fire = Some(now);
    st.action_times.push_back(now);
    st.cooldown_until = Some(now + step.delay + rb.cooldown);
    Decision { verdict: Verdict::Run { index, step }, ladder_reset, breaker_closed, next: Some(st) }
}

/// Whether a trigger that stays true (health still failing after a
/// restart) fires again: once the cooldown is over and nothing runs for the
/// service, so the ladder climbs without a firing at every input.
pub fn refires(state: &State<'_>, now: SystemTime) -> bool {
    let cooled = state.saved.is_none_or(|s| s.cooldown_until.is_none_or(|c| now >= c));
    cooled && !state.busy
}

/// Whether `rb` only pretends: the engine's dry run overrides every runbook.
pub fn dry_run(rb: &Runbook, engine_dry_run: bool) -> bool {
    engine_dry_run || rb.dry_run
}

/// The state a runbook's decisions read and write. Dry-run ladders are kept
/// apart so that turning dry-run off starts fresh.
pub fn state_key(rb: &Runbook, dry_run: bool) -> String {
    if dry_run {
        format!("dry-run:{}", rb.name)
    } else {
        rb.name.clone()
    }
}

/// Time from `then` to `now`; zero when the clock went back.
fn elapsed(then: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::model::{parse, Action};

    const LADDER: &str = "name: api-crash\nservice: api\ntrigger: { event: process_exit }\nsteps:\n  - restart: {}\n  - restart: { delay: 10s }\n  - stop: {}\ncooldown: 1m\n";

    fn rb(text: &str) -> Runbook {
        parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Decides with `saved` as the state, not busy.
    fn at(rb: &Runbook, saved: Option<&RunbookState>, now: SystemTime) -> Decision {
        decide(rb, &State { saved, busy: false }, now)
    }

    /// Fires `rb` at each time in turn, carrying the state over.
    fn fire_at(rb: &Runbook, times: &[SystemTime]) -> (Vec<Verdict>, RunbookState) {
        let mut st = RunbookState::default();
        let mut out = Vec::new();
        for &t in times {
            let d = at(rb, Some(&st), t);
            if let Some(n) = d.next {
                st = n;
            }
            out.push(d.verdict);
        }
        (out, st)
    }

    fn index(v: &Verdict) -> Option<usize> {
        match v {
            Verdict::Run { index, .. } => Some(*index),
            _ => None,
        }
    }

    #[test]
    fn first_firing_runs_step_one_and_starts_the_cooldown() {
        let r = rb(LADDER);
        let d = at(&r, None, t0());
        assert_eq!(d.verdict, Verdict::Run { index: 0, step: r.steps[0].clone() });
        assert!(d.verdict.saves());
        assert_eq!((d.ladder_reset, d.breaker_closed), (None, false));
        let st = d.next.unwrap();
        assert_eq!(st.position, 1);
        assert_eq!(st.last_fire, Some(t0()));
        assert_eq!(st.action_times, [t0()]);
        assert_eq!(st.cooldown_until, Some(t0() + secs(60)));
    }

    #[test]
    fn later_firings_climb_the_ladder_and_repeat_the_last_step() {
        let r = rb(LADDER);
        let times: Vec<SystemTime> = (0..5).map(|i| t0() + secs(120 * i)).collect();
        let (verdicts, st) = fire_at(&r, &times);
        let steps: Vec<Option<usize>> = verdicts.iter().map(index).collect();
        assert_eq!(steps, [Some(0), Some(1), Some(2), Some(2), Some(2)]);
        assert_eq!(st.position, 3);
        // The cooldown starts after the step's delay.
        let (_, st) = fire_at(&r, &times[..2]);
        assert_eq!(st.cooldown_until, Some(times[1] + secs(10) + secs(60)));
        let Verdict::Run { step, .. } = &verdicts[2] else { panic!() };
        assert_eq!(step.action, Action::Stop);
    }

    #[test]
    fn cooldown_suppresses_and_changes_nothing() {
        let r = rb(LADDER);
        let (_, st) = fire_at(&r, &[t0()]);
        let d = at(&r, Some(&st), t0() + secs(59));
        assert_eq!(d.verdict, Verdict::CoolingDown { until: t0() + secs(60) });
        assert_eq!(d.next, None);
        assert!(!d.verdict.saves());
        assert_eq!(index(&at(&r, Some(&st), t0() + secs(60)).verdict), Some(1));
    }

    #[test]
    fn an_execution_in_progress_suppresses_before_anything_else() {
        let r = rb(LADDER);
        let (_, st) = fire_at(&r, &[t0()]);
        for saved in [None, Some(&st)] {
            let d = decide(&r, &State { saved, busy: true }, t0() + secs(1));
            assert_eq!(
                d,
                Decision { verdict: Verdict::Busy, ladder_reset: None, breaker_closed: false, next: None }
            );
        }
    }

    #[test]
    fn reset_after_a_quiet_period_returns_to_step_one() {
        let r = rb(&format!("{LADDER}reset_after: 10m\n"));
        let (_, st) = fire_at(&r, &[t0(), t0() + secs(120)]);
        assert_eq!(st.position, 2);
        let soon = at(&r, Some(&st), t0() + secs(120 + 599));
        assert_eq!((index(&soon.verdict), soon.ladder_reset), (Some(2), None));
        let quiet = at(&r, Some(&st), t0() + secs(120 + 600));
        assert_eq!((index(&quiet.verdict), quiet.ladder_reset), (Some(0), Some(secs(600))));
        assert_eq!(quiet.next.unwrap().position, 1);
        // Without reset_after the ladder stays where it is.
        let r = rb(LADDER);
        let (_, st) = fire_at(&r, &[t0(), t0() + secs(120)]);
        assert_eq!(index(&at(&r, Some(&st), t0() + secs(100_000)).verdict), Some(2));
    }

    #[test]
    fn a_full_action_window_opens_the_breaker_once_and_escalates() {
        let r = rb(&format!(
            "{LADDER}max_actions: {{ count: 2, per: 1h }}\nescalate: {{ log: {{ message: \"giving up\" }} }}\n"
        ));
        let times = [t0(), t0() + secs(120), t0() + secs(240)];
        let (verdicts, st) = fire_at(&r, &times);
        assert_eq!(index(&verdicts[0]), Some(0));
        assert_eq!(index(&verdicts[1]), Some(1));
        let Verdict::OpenBreaker { max, escalate } = &verdicts[2] else { panic!("{verdicts:?}") };
        assert_eq!((max.count, max.per), (2, secs(3600)));
        assert_eq!(escalate.as_ref(), r.escalate.as_ref());
        assert!(verdicts[2].saves());
        assert!(st.breaker_open);
        assert_eq!(st.last_fire, Some(times[2]));
        // The breaker's opening is not an action: no cooldown, no ladder move.
        assert_eq!((st.position, st.action_times.len()), (2, 2));

        // Still full: suppressed, and nothing to save.
        let d = at(&r, Some(&st), t0() + secs(300));
        assert_eq!(d.verdict, Verdict::BreakerOpen);
        assert!(!d.verdict.saves());
        assert!(d.next.unwrap().breaker_open);

        // Once the first action leaves the window, the breaker closes and
        // the ladder goes on.
        let d = at(&r, Some(&st), t0() + secs(3600));
        assert!(d.breaker_closed);
        assert_eq!(index(&d.verdict), Some(2));
        let next = d.next.unwrap();
        assert!(!next.breaker_open);
        assert_eq!(next.action_times, [t0() + secs(120), t0() + secs(3600)]);
    }

    #[test]
    fn without_an_escalation_the_breaker_opens_silently() {
        let r = rb(&format!("{LADDER}max_actions: {{ count: 1, per: 1h }}\n"));
        let (verdicts, _) = fire_at(&r, &[t0(), t0() + secs(120)]);
        assert!(matches!(verdicts[1], Verdict::OpenBreaker { escalate: None, .. }), "{verdicts:?}");
    }

    #[test]
    fn actions_outside_the_window_do_not_count() {
        let r = rb(&format!("{LADDER}max_actions: {{ count: 2, per: 5m }}\n"));
        let times: Vec<SystemTime> = (0..6).map(|i| t0() + secs(200 * i)).collect();
        let (verdicts, st) = fire_at(&r, &times);
        assert!(verdicts.iter().all(|v| index(v).is_some()), "{verdicts:?}");
        assert_eq!(st.action_times.len(), 2);
    }

    #[test]
    fn a_level_refires_once_cooled_and_idle() {
        let r = rb(LADDER);
        let (_, st) = fire_at(&r, &[t0()]);
        let s = |saved, busy| State { saved, busy };
        assert!(refires(&s(None, false), t0()));
        assert!(!refires(&s(None, true), t0()));
        assert!(!refires(&s(Some(&st), false), t0() + secs(59)));
        assert!(refires(&s(Some(&st), false), t0() + secs(60)));
        assert!(!refires(&s(Some(&st), true), t0() + secs(60)));
    }

    #[test]
    fn dry_run_decides_alike_on_a_ladder_of_its_own() {
        let r = rb(LADDER);
        let dry = rb(&format!("{LADDER}dry_run: true\n"));
        assert!(!dry_run(&r, false));
        assert!(dry_run(&r, true));
        assert!(dry_run(&dry, false));
        assert_eq!(state_key(&r, false), "api-crash");
        assert_eq!(state_key(&r, true), "dry-run:api-crash");
        assert_eq!(at(&dry, None, t0()).verdict, at(&r, None, t0()).verdict);
    }

    #[test]
    fn a_clock_that_went_back_counts_as_no_time() {
        let r = rb(&format!("{LADDER}reset_after: 10m\nmax_actions: {{ count: 1, per: 1m }}\n"));
        let (_, st) = fire_at(&r, &[t0()]);
        let mut st = st;
        st.cooldown_until = None;
        let d = at(&r, Some(&st), t0() - secs(3600));
        assert_eq!(d.ladder_reset, None);
        assert!(matches!(d.verdict, Verdict::OpenBreaker { .. }), "{d:?}");
    }
}

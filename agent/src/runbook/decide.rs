//! The runbook's incident as a state machine, and what each event does to
//! it: a firing, the end of a step, the passing of time. A pure function
//! of the runbook, its state and the time, so that every branch is tested
//! without actions, audit or files; the engine does the I/O around it.
//!
//! An incident starts with a firing and climbs the ladder to its end:
//!
//! - a step that does not heal (its verification fails, its action fails,
//!   or it has no verification and the service is down or failed again
//!   while it ran) is followed at once by the next step, without waiting
//!   for a new firing; after the last one the escalation runs, and the
//!   incident is exhausted: nothing more runs until the ladder resets;
//! - a step that heals ends the incident; the ladder stays where it is,
//!   so that a new failure runs the next step (the last one again once
//!   the ladder is climbed), until the service has been quiet for
//!   `reset_after`, which sends the ladder back to step 1;
//! - a step without verification, after which the service is up, leaves
//!   the incident open: the next firing runs the next step (the last one
//!   again at the end), but not before the cooldown is over; a level that
//!   still holds then is an unhealed incident. A firing during the
//!   cooldown, or while a step runs, is held and acted on when it can be:
//!   never dropped.
//!
//! Only actions custos performed count toward the circuit breaker (a
//! restart not done because systemd is already restarting the unit is
//! none); a full window opens it, runs the escalation once and stops
//! every action until the window has room again.

use super::model::{MaxActions, Runbook, Step};
use super::state::{Pending, Phase, RunbookState};
use std::time::{Duration, SystemTime};

/// What a decision looks at besides the runbook and its state.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub now: SystemTime,
    /// The service is in maintenance: decide and audit, act on nothing.
    pub paused: bool,
    /// Another runbook of the service is running a step.
    pub service_busy: bool,
    /// The runbook's trigger is a level that holds now (health failing,
    /// service down, a metric over its bound).
    pub level_active: bool,
}

impl Context {
    pub fn at(now: SystemTime) -> Context {
        Context { now, paused: false, service_busy: false, level_active: false }
    }
}

/// How a step went, as the engine saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutcome {
    /// 0-based ladder index; `None` for the escalation.
    pub step: Option<usize>,
    /// custos did something (a restart systemd was already doing is not).
    pub performed: bool,
    /// The action succeeded (or there was nothing to do).
    pub ok: bool,
    pub health: Health,
    /// When the action was done: firings held from before then are the
    /// failure it answered (one crash is often several firings: the OOM
    /// kill and the exit); firings after it are failures despite it.
    pub acted_at: SystemTime,
}

/// What is known about the service's health after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Its verification found it healthy.
    Healed,
    /// Its verification found it not healthy (at once when it failed or
    /// exited, else when the time allowed ran out).
    NotHealed,
    /// No verification. `failing`: the service is down or failed now, or
    /// the trigger fired again while the step ran.
    Unverified { failing: bool },
}

/// What a decision makes the engine do.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Run this step now (after its delay): `index` 0-based, `None` for
    /// the escalation.
    Run { index: Option<usize>, step: Step },
    /// The action window is full: the breaker opens and custos stops
    /// acting on the service; the escalation, if any, runs once.
    OpenBreaker { max: MaxActions, escalate: Option<Step> },
    /// Every step ran without healing the service: the incident is
    /// exhausted; the escalation, if any, runs once.
    LadderExhausted { escalate: Option<Step> },
    /// Kept and acted on later.
    Held(Hold),
    /// Not acted on.
    Suppressed(Suppression),
    /// The step that ran ends the incident (`Healed`) or leaves it open
    /// until the next firing (`Open`).
    Settled(Settlement),
    /// Nothing happens.
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A step runs for the service: looked at when it ends.
    Busy,
    /// The last step showed nothing; the next runs when the cooldown ends.
    CoolingDown { until: SystemTime },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppression {
    BreakerOpen,
    Exhausted,
    /// The service is paused; `would` is the step that would run.
    Paused {
        would: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Healed,
    Open {
        cooldown_until: SystemTime,
    },
    Exhausted,
    /// The breaker's escalation ran; custos acts again once the window has room.
    BreakerOpen,
}

impl Hold {
    pub fn reason(&self) -> &'static str {
        match self {
            Hold::Busy => "busy",
            Hold::CoolingDown { .. } => "cooldown",
        }
    }
}

impl Suppression {
    pub fn reason(&self) -> &'static str {
        match self {
            Suppression::BreakerOpen => "breaker_open",
            Suppression::Exhausted => "ladder_exhausted",
            Suppression::Paused { .. } => "paused",
        }
    }
}

/// A decision: what to do, and the runbook's state afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The ladder went back to step 1 after the service was quiet this long.
    pub ladder_reset: Option<Duration>,
    /// The breaker closed: the action window has room again.
    pub breaker_closed: bool,
    /// Held firings this decision acts on (they are not held any more).
    pub folded: u32,
    pub next: RunbookState,
}

impl Decision {
    fn new(verdict: Verdict, next: RunbookState) -> Decision {
        Decision { verdict, ladder_reset: None, breaker_closed: false, folded: 0, next }
    }
}

/// A firing of `rb` with the fields `event` (kept for templates when the
/// firing is held).
pub fn fire(
    rb: &Runbook,
    saved: Option<&RunbookState>,
    event: &serde_json::Map<String, serde_json::Value>,
    cx: &Context,
) -> Decision {
    let mut st = saved.cloned().unwrap_or_default();
    let now = cx.now;
    if matches!(st.phase, Phase::Running { .. }) || cx.service_busy {
        hold(&mut st, event, now);
        return Decision::new(Verdict::Held(Hold::Busy), st);
    }
    if cx.paused {
        let would = would_run(rb, &st);
        return Decision::new(Verdict::Suppressed(Suppression::Paused { would }), st);
    }
    let ladder_reset = reset_if_quiet(rb, &mut st, cx);
    st.last_fire = Some(now);
    let mut d = match st.phase {
        Phase::Exhausted { .. } => Decision::new(Verdict::Suppressed(Suppression::Exhausted), st),
        Phase::Open { .. } if st.cooldown_until.is_some_and(|u| now < u) => {
            let until = st.cooldown_until.unwrap_or(now);
            hold(&mut st, event, now);
            Decision::new(Verdict::Held(Hold::CoolingDown { until }), st)
        }
        _ => next_step(rb, st, now, false),
    };
    d.ladder_reset = d.ladder_reset.or(ladder_reset);
    d
}

/// The step running ended with `outcome`.
pub fn step_ended(
    rb: &Runbook,
    saved: Option<&RunbookState>,
    outcome: &StepOutcome,
    cx: &Context,
) -> Decision {
    let mut st = saved.cloned().unwrap_or_default();
    let now = cx.now;
    if !outcome.performed {
        // Counted when the step was decided, in case the agent died while
        // it ran; nothing was done after all.
        if let Phase::Running { since, .. } = st.phase {
            if let Some(i) = st.action_times.iter().rposition(|t| *t == since) {
                st.action_times.remove(i);
            }
        }
    }
    let Some(_index) = outcome.step else {
        // The escalation ran: the incident stays unhealed.
        return if st.breaker_open {
            st.phase = Phase::Open { since: now };
            Decision::new(Verdict::Settled(Settlement::BreakerOpen), st)
        } else {
            st.phase = Phase::Exhausted { at: now };
            Decision::new(Verdict::Settled(Settlement::Exhausted), st)
        };
    };
    // What fired before the action is the failure it answered.
    let mut folded = 0;
    if st.pending.as_ref().is_some_and(|p| p.last < outcome.acted_at) {
        folded = st.pending.take().map(|p| p.count).unwrap_or(0);
    }
    let failed_since = st.pending.is_some();
    let unhealed = !outcome.ok
        || match outcome.health {
            Health::Healed => false,
            Health::NotHealed => true,
            Health::Unverified { failing } => failing || failed_since,
        };
    // Unhealed until shown otherwise.
    st.phase = Phase::Open { since: now };
    let mut d = if unhealed {
        // The next step at once; what fired during the step is part of it.
        folded += st.pending.take().map(|p| p.count).unwrap_or(0);
        next_step(rb, st, now, true)
    } else if outcome.health == Health::Healed {
        st.phase = Phase::Healed { at: now };
        st.cooldown_until = None;
        match st.pending.take() {
            // A firing after the action, though it healed: a new failure.
            Some(p) => {
                st.last_fire = Some(p.last);
                folded += p.count;
                next_step(rb, st, now, false)
            }
            None => Decision::new(Verdict::Settled(Settlement::Healed), st),
        }
    } else {
        let until = now + rb.cooldown;
        st.cooldown_until = Some(until);
        Decision::new(Verdict::Settled(Settlement::Open { cooldown_until: until }), st)
    };
    d.folded += folded;
    d
}

/// Time passed: the ladder resets after a quiet `reset_after`, a held
/// firing runs once nothing holds it any more, and a level that still
/// holds fires again once the cooldown is over.
pub fn tick(rb: &Runbook, saved: Option<&RunbookState>, cx: &Context) -> Decision {
    let mut st = saved.cloned().unwrap_or_default();
    let now = cx.now;
    if matches!(st.phase, Phase::Running { .. }) || cx.service_busy || cx.paused {
        return Decision::new(Verdict::Nothing, st);
    }
    let ladder_reset = reset_if_quiet(rb, &mut st, cx);
    let cooled = st.cooldown_until.is_none_or(|u| now >= u);
    let mut d = match (&st.phase, st.pending.is_some()) {
        (Phase::Exhausted { .. }, true) => {
            // Held while a step ran; the ladder is done with it.
            let p = st.pending.take();
            let mut d = Decision::new(Verdict::Suppressed(Suppression::Exhausted), st);
            d.folded = p.map(|p| p.count).unwrap_or(0);
            d
        }
        (Phase::Open { .. }, true) if cooled => {
            let p = st.pending.take();
            let mut d = next_step(rb, st, now, false);
            d.folded = p.map(|p| p.count).unwrap_or(0);
            d
        }
        (Phase::Idle | Phase::Healed { .. }, true) => {
            let p = st.pending.take();
            st.last_fire = p.as_ref().map(|p| p.last).or(st.last_fire);
            let mut d = next_step(rb, st, now, false);
            d.folded = p.map(|p| p.count).unwrap_or(0);
            d
        }
        _ if refires(rb, &st, cx) => {
            // The level still holds: what ran did not heal it.
            st.last_fire = Some(now);
            let unhealed = matches!(st.phase, Phase::Open { .. });
            next_step(rb, st, now, unhealed)
        }
        _ => Decision::new(Verdict::Nothing, st),
    };
    d.ladder_reset = d.ladder_reset.or(ladder_reset);
    d
}

/// Whether a level that still holds (health still failing, the service
/// still down) fires again now: when nothing runs or holds it and a
/// firing would do something (not cooling down, not exhausted, breaker
/// not full, not paused).
pub fn refires(rb: &Runbook, st: &RunbookState, cx: &Context) -> bool {
    if !cx.level_active || cx.paused || cx.service_busy || st.pending.is_some() {
        return false;
    }
    let cooled = st.cooldown_until.is_none_or(|u| cx.now >= u);
    let window_full = st.breaker_open && in_window(rb, st, cx.now) >= rb.max_actions.count as usize;
    match st.phase {
        Phase::Running { .. } | Phase::Exhausted { .. } => false,
        Phase::Open { .. } => cooled && !window_full,
        Phase::Idle | Phase::Healed { .. } => !window_full,
    }
}

/// Chooses the next step of the incident. Past the end of the ladder, an
/// incident known to be `unhealed` (a step did not heal it, its level
/// still holds) is exhausted and escalates; any other (a new failure, or
/// one after a step that showed nothing) runs the last step again, within
/// the breaker's bound.
fn next_step(rb: &Runbook, mut st: RunbookState, now: SystemTime, unhealed: bool) -> Decision {
    st.pending = None;
    let max = rb.max_actions;
    while st.action_times.front().is_some_and(|t| elapsed(*t, now) >= max.per) {
        st.action_times.pop_front();
    }
    let mut breaker_closed = false;
    if st.action_times.len() >= max.count as usize {
        if st.breaker_open {
            return Decision::new(Verdict::Suppressed(Suppression::BreakerOpen), st);
        }
        st.breaker_open = true;
        st.phase = match &rb.escalate {
            Some(_) => Phase::Running { step: None, since: now },
            None => Phase::Open { since: now },
        };
        return Decision::new(Verdict::OpenBreaker { max, escalate: rb.escalate.clone() }, st);
    }
    if st.breaker_open {
        st.breaker_open = false;
        breaker_closed = true;
    }
    let last = rb.steps.len() - 1;
    let index = if st.position <= last {
        st.position
    } else if unhealed {
        // Climbed to the end without healing.
        st.phase = match &rb.escalate {
            Some(_) => Phase::Running { step: None, since: now },
            None => Phase::Exhausted { at: now },
        };
        let mut d = Decision::new(Verdict::LadderExhausted { escalate: rb.escalate.clone() }, st);
        d.breaker_closed = breaker_closed;
        return d;
    } else {
        last
    };
    st.position = index + 1;
    st.phase = Phase::Running { step: Some(index), since: now };
    st.cooldown_until = None;
    st.action_times.push_back(now);
    let mut d = Decision::new(Verdict::Run { index: Some(index), step: rb.steps[index].clone() }, st);
    d.breaker_closed = breaker_closed;
    d
}

/// Keeps a firing to act on later, folding it into one already kept.
fn hold(st: &mut RunbookState, event: &serde_json::Map<String, serde_json::Value>, now: SystemTime) {
    st.last_fire = Some(now);
    match &mut st.pending {
        Some(p) => {
            p.last = now;
            p.count += 1;
            p.event = event.clone();
        }
        None => st.pending = Some(Pending { first: now, last: now, count: 1, event: event.clone() }),
    }
}

/// Sends the ladder back to step 1 when the service has been quiet for
/// `reset_after`: no firing, the level (if any) not holding, nothing held,
/// and for a healed incident quiet since it healed.
fn reset_if_quiet(rb: &Runbook, st: &mut RunbookState, cx: &Context) -> Option<Duration> {
    if cx.level_active || st.pending.is_some() || matches!(st.phase, Phase::Running { .. }) {
        return None;
    }
    if st.position == 0 && matches!(st.phase, Phase::Idle) {
        return None;
    }
    let quiet_since = [st.last_fire, st.phase.since()].into_iter().flatten().max()?;
    if elapsed(quiet_since, cx.now) < rb.reset_after {
        return None;
    }
    st.position = 0;
    st.phase = Phase::Idle;
    st.cooldown_until = None;
    Some(rb.reset_after)
}

/// The step a firing would run now (for a paused service's audit).
fn would_run(rb: &Runbook, st: &RunbookState) -> Option<usize> {
    match st.phase {
        Phase::Exhausted { .. } => None,
        _ => Some(st.position.min(rb.steps.len() - 1)),
    }
}

fn in_window(rb: &Runbook, st: &RunbookState, now: SystemTime) -> usize {
    st.action_times.iter().filter(|t| elapsed(**t, now) < rb.max_actions.per).count()
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

    /// restart (verified), restart after 10 s (verified), exec (not verified), webhook.
    const LADDER: &str = r#"
name: api-crash
service: api
trigger: { event: process_exit }
steps:
  - restart: {}
    verify: { healthy_within: 30s }
  - restart: { delay: 10s }
    verify: { healthy_within: 30s }
  - exec: { argv: ["/bin/true"] }
  - webhook: { url: "http://127.0.0.1:9/x" }
cooldown: 1m
reset_after: 10m
"#;

    fn rb(text: &str) -> Runbook {
        parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn at(s: u64) -> SystemTime {
        t0() + Duration::from_secs(s)
    }

    fn cx(s: u64) -> Context {
        Context::at(at(s))
    }

    fn no_event() -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    fn ran(d: &Decision) -> Option<Option<usize>> {
        match &d.verdict {
            Verdict::Run { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// A step whose action was done at the start of the test.
    fn ended(step: Option<usize>, health: Health) -> StepOutcome {
        StepOutcome { step, performed: true, ok: true, health, acted_at: at(0) }
    }

    /// A test driver: the state carried from decision to decision.
    struct Incident {
        rb: Runbook,
        st: RunbookState,
    }

    impl Incident {
        fn new(text: &str) -> Incident {
            Incident { rb: rb(text), st: RunbookState::default() }
        }
        fn apply(&mut self, d: Decision) -> Decision {
            self.st = d.next.clone();
            d
        }
        fn fire(&mut self, s: u64) -> Decision {
            let d = fire(&self.rb, Some(&self.st), &no_event(), &cx(s));
            self.apply(d)
        }
        fn end(&mut self, s: u64, outcome: StepOutcome) -> Decision {
            let d = step_ended(&self.rb, Some(&self.st), &outcome, &cx(s));
            self.apply(d)
        }
        fn tick(&mut self, c: Context) -> Decision {
            let d = tick(&self.rb, Some(&self.st), &c);
            self.apply(d)
        }
    }

    #[test]
    fn a_step_that_does_not_heal_is_followed_at_once_to_the_escalation() {
        let mut i = Incident::new(&format!("{LADDER}escalate: {{ log: {{ message: \"giving up\" }} }}\n"));
        let d = i.fire(0);
        assert_eq!(ran(&d), Some(Some(0)));
        assert_eq!(i.st.phase, Phase::Running { step: Some(0), since: at(0) });
        // Not healed at +2 s: step 2 at once, no firing needed, no cooldown.
        assert_eq!(ran(&i.end(2, ended(Some(0), Health::NotHealed))), Some(Some(1)));
        // Its action failed: step 3 at once.
        let failed = StepOutcome {
            step: Some(1),
            performed: true,
            ok: false,
            health: Health::NotHealed,
            acted_at: at(3),
        };
        assert_eq!(ran(&i.end(15, failed)), Some(Some(2)));
        // No verification, but the service is down: step 4 at once.
        assert_eq!(ran(&i.end(16, ended(Some(2), Health::Unverified { failing: true }))), Some(Some(3)));
        // The end of the ladder: the escalation, then exhausted.
        let d = i.end(17, ended(Some(3), Health::Unverified { failing: true }));
        let Verdict::LadderExhausted { escalate: Some(step) } = &d.verdict else { panic!("{d:?}") };
        assert_eq!(step.action.name(), "log");
        assert_eq!(i.st.phase, Phase::Running { step: None, since: at(17) });
        let d = i.end(18, ended(None, Health::Unverified { failing: true }));
        assert_eq!(d.verdict, Verdict::Settled(Settlement::Exhausted));
        // Exhausted: later firings run nothing, even after the cooldown.
        assert_eq!(i.fire(200).verdict, Verdict::Suppressed(Suppression::Exhausted));
        assert_eq!(i.st.action_times.len(), 4, "four actions, the escalation is not counted");
    }

    #[test]
    fn without_an_escalation_the_end_of_the_ladder_exhausts_the_incident() {
        let mut i = Incident::new(LADDER);
        i.st.position = 3;
        i.fire(0);
        let d = i.end(1, ended(Some(3), Health::Unverified { failing: true }));
        assert_eq!(d.verdict, Verdict::LadderExhausted { escalate: None });
        assert_eq!(i.st.phase, Phase::Exhausted { at: at(1) });
    }

    #[test]
    fn a_firing_during_a_step_is_looked_at_when_it_ends() {
        let mut i = Incident::new(LADDER);
        i.fire(0);
        // The unit dies again during the verification: held, not dropped.
        assert_eq!(i.fire(2).verdict, Verdict::Held(Hold::Busy));
        assert_eq!(i.fire(3).verdict, Verdict::Held(Hold::Busy));
        assert_eq!(i.st.pending.as_ref().map(|p| p.count), Some(2));
        // Not healed: the next step runs, and takes the held firings with it.
        let d = i.end(4, ended(Some(0), Health::NotHealed));
        assert_eq!((ran(&d), d.folded), (Some(Some(1)), 2));
        assert_eq!(i.st.pending, None);
        // A step without verification that the trigger fired during is not
        // healed either.
        let mut i = Incident::new(LADDER);
        i.st.position = 2;
        i.fire(0);
        i.fire(1);
        let d = i.end(2, ended(Some(2), Health::Unverified { failing: false }));
        assert_eq!((ran(&d), d.folded), (Some(Some(3)), 1));
    }

    #[test]
    fn a_firing_after_the_action_of_a_step_that_healed_is_a_new_failure() {
        let mut i = Incident::new(LADDER);
        i.fire(0);
        i.fire(1);
        let d = i.end(5, ended(Some(0), Health::Healed));
        assert_eq!((ran(&d), d.folded), (Some(Some(1)), 1));
        // The same failure firing twice (the OOM kill and the exit) before
        // the action: one incident, healed.
        let mut i = Incident::new(LADDER);
        i.fire(10);
        i.fire(10);
        let outcome = StepOutcome { acted_at: at(11), ..ended(Some(0), Health::Healed) };
        let d = i.end(12, outcome);
        assert_eq!((d.verdict, d.folded), (Verdict::Settled(Settlement::Healed), 1));
        assert_eq!(i.st.pending, None);
    }

    #[test]
    fn a_healed_incident_acts_at_once_on_the_next_failure_and_resets_after_a_quiet_period() {
        let mut i = Incident::new(LADDER);
        i.fire(0);
        assert_eq!(i.end(1, ended(Some(0), Health::Healed)).verdict, Verdict::Settled(Settlement::Healed));
        assert_eq!(i.st.phase, Phase::Healed { at: at(1) });
        // A new failure 5.7 s later: no cooldown swallows it, step 2 runs.
        assert_eq!(ran(&i.fire(6)), Some(Some(1)));
        i.end(40, ended(Some(1), Health::Healed));
        // Quiet for reset_after since it healed: back to step 1 (audited once).
        let d = i.tick(cx(40 + 599));
        assert_eq!((d.verdict, d.ladder_reset), (Verdict::Nothing, None));
        let d = i.tick(cx(40 + 600));
        assert_eq!(d.ladder_reset, Some(Duration::from_secs(600)));
        assert_eq!((i.st.position, &i.st.phase), (0, &Phase::Idle));
        assert_eq!(i.tick(cx(40 + 700)).ladder_reset, None);
        assert_eq!(ran(&i.fire(2000)), Some(Some(0)));
        // A firing long after the heal resets first, without a tick.
        let mut i = Incident::new(LADDER);
        i.fire(0);
        i.end(1, ended(Some(0), Health::Healed));
        let d = i.fire(1 + 3600);
        assert_eq!((ran(&d), d.ladder_reset), (Some(Some(0)), Some(Duration::from_secs(600))));
    }

    #[test]
    fn a_ladder_climbed_to_the_end_repeats_its_last_step_for_a_new_failure() {
        let mut i = Incident::new(&LADDER.replace(
            "  - exec: { argv: [\"/bin/true\"] }\n  - webhook: { url: \"http://127.0.0.1:9/x\" }\n",
            "",
        ));
        i.fire(0);
        i.end(1, ended(Some(0), Health::NotHealed));
        i.end(15, ended(Some(1), Health::Healed));
        assert_eq!(ran(&i.fire(100)), Some(Some(1)));
    }

    #[test]
    fn an_unverified_step_leaves_the_incident_open_and_the_cooldown_holds_the_next_firing() {
        let mut i = Incident::new(LADDER);
        i.st.position = 2;
        i.fire(0);
        let d = i.end(1, ended(Some(2), Health::Unverified { failing: false }));
        assert_eq!(d.verdict, Verdict::Settled(Settlement::Open { cooldown_until: at(61) }));
        // Within the cooldown: held (not swallowed), and run when it ends.
        assert_eq!(i.fire(30).verdict, Verdict::Held(Hold::CoolingDown { until: at(61) }));
        assert_eq!(i.fire(40).verdict, Verdict::Held(Hold::CoolingDown { until: at(61) }));
        assert_eq!(i.tick(cx(60)).verdict, Verdict::Nothing);
        let d = i.tick(cx(61));
        assert_eq!((ran(&d), d.folded), (Some(Some(3)), 2));
        // After the cooldown a firing runs at once.
        let mut i = Incident::new(LADDER);
        i.st.position = 2;
        i.fire(0);
        i.end(1, ended(Some(2), Health::Unverified { failing: false }));
        assert_eq!(ran(&i.fire(62)), Some(Some(3)));
        // At the end of an open ladder the last step runs again (after the
        // cooldown, within the breaker)...
        i.end(63, ended(Some(3), Health::Unverified { failing: false }));
        assert_eq!(ran(&i.fire(200)), Some(Some(3)));
        // ... unless the level still holds: then it did not heal.
        i.end(201, ended(Some(3), Health::Unverified { failing: false }));
        let d = i.tick(Context { level_active: true, ..cx(300) });
        assert_eq!(d.verdict, Verdict::LadderExhausted { escalate: None });
        assert_eq!(i.fire(400).verdict, Verdict::Suppressed(Suppression::Exhausted));
    }

    #[test]
    fn only_performed_actions_count_toward_the_breaker() {
        let mut i = Incident::new(&format!(
            "{}max_actions: {{ count: 2, per: 1h }}\n",
            LADDER.replace("reset_after: 10m\n", "reset_after: 10s\n")
        ));
        // Ten restarts systemd was already doing: none counts.
        for n in 0..10 {
            let s = n * 100;
            assert_eq!(ran(&i.fire(s)), Some(Some(0)), "firing {n}");
            let noop = StepOutcome {
                step: Some(0),
                performed: false,
                ok: true,
                health: Health::Healed,
                acted_at: at(s),
            };
            i.end(s + 1, noop);
        }
        assert!(i.st.action_times.is_empty());
        assert!(!i.st.breaker_open);
        // Two real ones fill the window; the third opens the breaker.
        i.fire(2000);
        i.end(2001, ended(Some(0), Health::Healed));
        i.fire(2002);
        i.end(2003, ended(Some(1), Health::Healed));
        let d = i.fire(2004);
        assert!(matches!(d.verdict, Verdict::OpenBreaker { escalate: None, .. }), "{d:?}");
        assert!(i.st.breaker_open);
        assert_eq!(i.fire(2005).verdict, Verdict::Suppressed(Suppression::BreakerOpen));
        // Once the first action leaves the window, it closes and acts again.
        let d = i.fire(2000 + 3600);
        assert!(d.breaker_closed, "{d:?}");
        assert!(ran(&d).is_some());
    }

    #[test]
    fn the_breaker_escalates_once_and_the_incident_stays_open() {
        let mut i = Incident::new(&format!(
            "{LADDER}max_actions: {{ count: 1, per: 1h }}\nescalate: {{ log: {{ message: \"giving up\" }} }}\n"
        ));
        i.fire(0);
        // Not healed: the next step would be the second action in the hour.
        let d = i.end(1, ended(Some(0), Health::NotHealed));
        let Verdict::OpenBreaker { max, escalate: Some(esc) } = &d.verdict else { panic!("{d:?}") };
        assert_eq!((max.count, esc.action.name()), (1, "log"));
        assert_eq!(i.st.phase, Phase::Running { step: None, since: at(1) });
        assert_eq!(
            i.end(2, ended(None, Health::Unverified { failing: true })).verdict,
            Verdict::Settled(Settlement::BreakerOpen)
        );
        assert!(matches!(i.st.phase, Phase::Open { .. }));
        assert_eq!(i.fire(100).verdict, Verdict::Suppressed(Suppression::BreakerOpen));
        // The escalation is not an action.
        assert_eq!(i.st.action_times.len(), 1);
    }

    #[test]
    fn a_paused_service_decides_but_nothing_changes() {
        let mut i = Incident::new(LADDER);
        let paused = Context { paused: true, ..cx(0) };
        let d = fire(&i.rb, Some(&i.st), &no_event(), &paused);
        assert_eq!(d.verdict, Verdict::Suppressed(Suppression::Paused { would: Some(0) }));
        assert_eq!(d.next, i.st);
        i.fire(0);
        i.end(1, ended(Some(0), Health::Healed));
        let d = fire(&i.rb, Some(&i.st), &no_event(), &Context { paused: true, ..cx(5) });
        assert_eq!(d.verdict, Verdict::Suppressed(Suppression::Paused { would: Some(1) }));
        assert_eq!(
            tick(&i.rb, Some(&i.st), &Context { paused: true, level_active: true, ..cx(500) }).verdict,
            Verdict::Nothing
        );
    }

    #[test]
    fn another_runbook_running_on_the_service_holds_the_firing_until_it_ends() {
        let mut i = Incident::new(LADDER);
        let busy = Context { service_busy: true, ..cx(0) };
        let d = fire(&i.rb, Some(&i.st), &no_event(), &busy);
        assert_eq!(d.verdict, Verdict::Held(Hold::Busy));
        i.st = d.next;
        assert_eq!(
            tick(&i.rb, Some(&i.st), &Context { service_busy: true, ..cx(1) }).verdict,
            Verdict::Nothing
        );
        let d = i.tick(cx(2));
        assert_eq!((ran(&d), d.folded), (Some(Some(0)), 1));
    }

    #[test]
    fn a_level_that_still_holds_refires_only_when_that_would_do_something() {
        let rbk = rb(&LADDER.replace("trigger: { event: process_exit }", "trigger: { health: failing }"));
        let level = |s| Context { level_active: true, ..cx(s) };
        let idle = RunbookState::default();
        assert!(refires(&rbk, &idle, &level(0)));
        assert!(!refires(&rbk, &idle, &cx(0)), "the level does not hold");
        assert!(!refires(&rbk, &idle, &Context { paused: true, ..level(0) }));
        let open = RunbookState {
            position: 3,
            phase: Phase::Open { since: at(0) },
            cooldown_until: Some(at(60)),
            ..Default::default()
        };
        assert!(!refires(&rbk, &open, &level(59)));
        assert!(refires(&rbk, &open, &level(60)));
        let mut i = Incident { rb: rbk, st: open };
        assert_eq!(ran(&i.tick(level(60))), Some(Some(3)));
        let exhausted = RunbookState { phase: Phase::Exhausted { at: at(0) }, ..Default::default() };
        assert!(!refires(&i.rb, &exhausted, &level(1000)));
        // A level that holds keeps an exhausted ladder from resetting.
        i.st = exhausted;
        assert_eq!(i.tick(level(100_000)).ladder_reset, None);
        assert!(i.tick(cx(100_000)).ladder_reset.is_some());
    }

    #[test]
    fn a_default_breaker_bounds_every_runbook() {
        let r = rb("name: x\nservice: api\ntrigger: { event: process_exit }\nsteps: [ { restart: {} } ]\n");
        assert_eq!(r.max_actions, crate::runbook::model::DEFAULT_MAX_ACTIONS);
        assert_eq!(r.reset_after, crate::runbook::model::DEFAULT_RESET_AFTER);
        let mut i = Incident { rb: r, st: RunbookState::default() };
        let mut actions = 0;
        for n in 0..100 {
            if ran(&i.fire(n * 10)).is_some() {
                actions += 1;
                i.end(n * 10 + 1, ended(Some(0), Health::Healed));
            }
        }
        assert_eq!(actions, crate::runbook::model::DEFAULT_MAX_ACTIONS.count);
    }

    #[test]
    fn the_step_that_runs_is_the_runbooks() {
        let mut i = Incident::new(LADDER);
        let Verdict::Run { step, .. } = i.fire(0).verdict else { panic!() };
        assert_eq!(step.action, Action::Restart);
        assert!(step.verify.is_some());
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
        assert_eq!(
            fire(&dry, None, &no_event(), &cx(0)).verdict,
            fire(&r, None, &no_event(), &cx(0)).verdict
        );
    }

    #[test]
    fn a_clock_that_went_back_counts_as_no_time() {
        let mut i = Incident::new(LADDER);
        i.fire(1000);
        i.end(1001, ended(Some(0), Health::Healed));
        let d = fire(&i.rb, Some(&i.st), &no_event(), &cx(10));
        assert_eq!(d.ladder_reset, None);
        assert_eq!(ran(&d), Some(Some(1)));
    }
}

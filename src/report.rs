//! The results of a fleet run, counted from its event stream: one report, and one table, for
//! `baton simulate` and `baton run` alike.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::policy::RotationReason;
use crate::record::FleetEvent;

/// Compaction figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompactionStats {
    /// Compactions that replaced a history.
    pub count: u64,
    /// Compactions that failed or timed out.
    pub failed: u64,
    /// Mean reduction, percent.
    pub mean_reduction: f64,
    /// Median reduction, percent.
    pub p50_reduction: f64,
    /// 95th percentile reduction, percent.
    pub p95_reduction: f64,
    /// Share of compactions whose reduction fell in the target band (40-50% by default).
    pub within_target: f64,
}

/// What a fleet did, from its event stream: the results table of `baton simulate` and
/// `baton run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    /// The seed it ran with: the workload's and the injected failures' in a simulation, the
    /// sampling seed sent with every request in a chat run (0 when none was).
    pub seed: u64,
    /// Work items in all.
    pub work_items: u64,
    /// Work items finished.
    pub done: u64,
    /// Work items given up on.
    pub dead_letters: u64,
    /// Work items neither done nor dead when the run stopped (duration reached).
    pub unfinished: u64,
    /// Sessions started (first sessions, successors and restarts).
    pub sessions_started: u64,
    /// Compactions.
    pub compactions: CompactionStats,
    /// Successful rotations by reason.
    pub rotations: BTreeMap<RotationReason, u64>,
    /// Rotations that failed (the item went back to the queue).
    pub failed_rotations: u64,
    /// Handoffs baton wrote itself because the agent could not summarise.
    pub fallback_handoffs: u64,
    /// Spawn and assign calls retried, in rotations and (where the caller adds them with
    /// [`Tally::start_retries`]) in session starts.
    pub retries: u64,
    /// Times a work item went back to the queue (a failed start or rotation, a crash past the
    /// restart budget, a shutdown): each is a retry of the item itself.
    pub requeues: u64,
    /// Runtime calls that failed but were not fatal (for example a close).
    pub runtime_warnings: u64,
    /// Usage messages sent (in a chat run: turns, each of which reports one).
    pub usage_messages: u64,
    /// Usage messages per second of wall time.
    pub usage_messages_per_second: f64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Peak resident memory of the process, bytes (0 where unknown).
    pub peak_memory_bytes: u64,
}

impl FleetReport {
    /// The figures a seed determines (everything but timing and memory): equal for two runs
    /// with the same configuration.
    pub fn totals(&self) -> impl PartialEq + std::fmt::Debug {
        (
            self.done,
            self.dead_letters,
            self.sessions_started,
            self.compactions.clone(),
            self.rotations.clone(),
            self.failed_rotations,
            self.fallback_handoffs,
            self.retries,
            self.requeues,
            self.runtime_warnings,
            self.usage_messages,
        )
    }
}

/// Counts what a fleet's event stream reported, for a [`FleetReport`].
#[derive(Debug, Default)]
pub struct Tally {
    /// `SessionStarted` events.
    started: u64,
    /// `WorkItemDone` events.
    done: u64,
    /// `DeadLetter` events.
    dead: u64,
    /// Reductions of the successful compactions, percent.
    reductions: Vec<f64>,
    /// Successful compactions within the target band.
    within_target: u64,
    /// Compactions that failed.
    failed_compactions: u64,
    /// Successful rotations by reason.
    rotations: BTreeMap<RotationReason, u64>,
    /// Rotations that failed.
    failed_rotations: u64,
    /// Fallback handoffs.
    fallbacks: u64,
    /// Spawn and assign attempts beyond the first of each.
    retries: u64,
    /// `WorkItemRequeued` events.
    requeues: u64,
    /// `RuntimeWarning` events.
    warnings: u64,
}

impl Tally {
    /// Counts one event.
    pub fn count(&mut self, event: &FleetEvent) {
        match event {
            FleetEvent::SessionStarted { .. } => self.started += 1,
            FleetEvent::WorkItemDone { .. } => self.done += 1,
            FleetEvent::DeadLetter { .. } => self.dead += 1,
            FleetEvent::Compaction(c) if c.success => {
                self.reductions.push(c.reduction_percent);
                self.within_target += u64::from(c.within_target);
            }
            FleetEvent::Compaction(_) => self.failed_compactions += 1,
            FleetEvent::Rotation(r) => {
                if r.success {
                    *self.rotations.entry(r.reason).or_insert(0) += 1;
                } else {
                    self.failed_rotations += 1;
                }
                self.fallbacks += u64::from(r.handoff_fallback);
                // One spawn and one assign is the minimum.
                self.retries += u64::from(r.attempts.saturating_sub(2));
            }
            FleetEvent::RuntimeWarning { .. } => self.warnings += 1,
            FleetEvent::WorkItemRequeued { .. } => self.requeues += 1,
            _ => {}
        }
    }

    /// Counts the spawn and assign calls retried while starting sessions, which no event
    /// carries: the supervisor's [`Inventory::start_retries`](crate::supervisor::Inventory).
    pub fn start_retries(&mut self, retries: u64) {
        self.retries += retries;
    }

    /// Compactions so far that replaced a history.
    pub fn compactions(&self) -> u64 {
        self.reductions.len() as u64
    }

    /// Successful rotations so far.
    pub fn rotations(&self) -> u64 {
        self.rotations.values().sum()
    }

    /// The report of a run of `work_items` items with `seed` that took `seconds` and sent
    /// `messages` usage messages. `unfinished` is left at 0 for the caller, who knows.
    pub fn report(
        mut self,
        seed: u64,
        work_items: u64,
        seconds: f64,
        messages: u64,
    ) -> FleetReport {
        self.reductions.sort_by(f64::total_cmp);
        let n = self.reductions.len();
        let pct = |p: f64| {
            if n == 0 {
                0.0
            } else {
                self.reductions[((n - 1) as f64 * p).round() as usize]
            }
        };
        let compactions = CompactionStats {
            count: n as u64,
            failed: self.failed_compactions,
            mean_reduction: if n == 0 {
                0.0
            } else {
                self.reductions.iter().sum::<f64>() / n as f64
            },
            p50_reduction: pct(0.50),
            p95_reduction: pct(0.95),
            within_target: if n == 0 {
                0.0
            } else {
                self.within_target as f64 / n as f64
            },
        };
        FleetReport {
            seed,
            work_items,
            done: self.done,
            dead_letters: self.dead,
            unfinished: 0,
            sessions_started: self.started,
            compactions,
            rotations: self.rotations,
            failed_rotations: self.failed_rotations,
            fallback_handoffs: self.fallbacks,
            retries: self.retries,
            requeues: self.requeues,
            runtime_warnings: self.warnings,
            usage_messages: messages,
            usage_messages_per_second: messages as f64 / seconds.max(1e-9),
            seconds,
            peak_memory_bytes: peak_rss(),
        }
    }
}

/// The process's peak resident memory (VmHWM), where the OS reports it.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

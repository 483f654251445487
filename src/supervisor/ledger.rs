//! The supervisor's ledger: every work item and where it is, the queue, the agent types with
//! their restart budgets, and the decisions made from them (which item starts next, what a
//! crash leads to, whether a rotation is allowed, when a type halts). Plain Rust, no actix and
//! no runtime calls, as `machine.rs` is to `session.rs`: the actor (`supervisor.rs`) carries
//! out what the ledger decides.

use std::collections::{HashMap, VecDeque};
use std::ops::Index;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{Place, PutOutcome, SupervisorError};
use crate::record::CrashOutcome;
use crate::vocab::{AgentType, Handoff, SpawnKey, WorkItem, WorkItemId, mix64};

/// At most `count` events per `period`: the shape of the rotation and restart budgets
/// (OTP's intensity and period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// Events allowed in any window of `period`.
    pub count: u32,
    /// The window.
    pub period: Duration,
}

/// A [`Budget`] being spent: the times of recent events.
#[derive(Debug, Clone, Default)]
pub(super) struct Spent {
    /// Events inside the current window, oldest first.
    times: VecDeque<Instant>,
}

impl Spent {
    /// Records an event at `now` if the budget allows it.
    pub(super) fn try_take(&mut self, budget: Budget, now: Instant) -> bool {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= budget.period)
        {
            self.times.pop_front();
        }
        if self.times.len() < budget.count as usize {
            self.times.push_back(now);
            true
        } else {
            false
        }
    }
}

pub(super) struct AgentEntry {
    /// The type, shared with its sessions.
    pub(super) agent: Arc<AgentType>,
    /// Crash restarts spent.
    pub(super) restarts: Spent,
    /// Past the restart budget: no more sessions of this type are started.
    pub(super) halted: bool,
}

/// One work item in the ledger. A fleet keeps one per item for its whole life, so what few
/// items need (a rotation budget being spent, a kept handoff) is boxed on first use: 88 bytes,
/// of which the work item is 48 and its place 24.
pub(super) struct ItemEntry {
    /// The item itself.
    pub(super) item: WorkItem,
    /// Where it is; moved only by [`Ledger::set_place`], which keeps the ledger's count of
    /// starts.
    place: Place,
    /// Crashes and failed starts so far.
    pub(super) attempts: u32,
    /// Sessions spawned for it so far; with its id, names each spawn (see [`spawn_key`]).
    pub(super) spawns: u32,
    /// Its rotations and kept handoff, once it rotated or recovered a handoff.
    rare: Option<Box<Rare>>,
}

/// The part of an [`ItemEntry`] that an item which never rotated does without.
#[derive(Default)]
struct Rare {
    /// Rotations spent.
    rotations: Spent,
    /// The handoff from its last rotation, kept when the item goes back to the queue.
    handoff: Option<Handoff>,
}

impl ItemEntry {
    /// A new entry for `item` at `place`, with no attempts, rotations, handoff or spawns yet.
    pub(super) fn new(item: WorkItem, place: Place) -> Self {
        Self {
            item,
            place,
            attempts: 0,
            spawns: 0,
            rare: None,
        }
    }

    /// Where the item is.
    pub(super) fn place(&self) -> &Place {
        &self.place
    }

    /// The handoff from its last rotation, kept when the item goes back to the queue.
    pub(super) fn handoff(&self) -> Option<&Handoff> {
        self.rare.as_ref()?.handoff.as_ref()
    }

    /// Keeps (or, with `None`, forgets) the item's handoff.
    pub(super) fn set_handoff(&mut self, handoff: Option<Handoff>) {
        match (&mut self.rare, handoff) {
            (None, None) => {}
            (Some(rare), handoff) => rare.handoff = handoff,
            (rare @ None, handoff) => {
                *rare = Some(Box::new(Rare {
                    handoff,
                    ..Rare::default()
                }))
            }
        }
    }

    /// The item's rotation budget being spent.
    fn rotations(&mut self) -> &mut Spent {
        &mut self.rare.get_or_insert_with(Box::default).rotations
    }
}

/// Every work item the ledger holds, by id. Items are never removed (the ledger keeps done and
/// dead ones), so the entries sit in a vector in the order they came, which only grows (its
/// spare capacity is never written, so it costs address space, not memory), and a hash map
/// from id to position has 16-byte entries: at 1M items about 124 bytes an item, where a hash
/// map of whole entries, up to half empty after it doubles, costs up to twice the entry.
#[derive(Default)]
pub(super) struct Items {
    /// Where each item's entry is in `entries`.
    index: HashMap<WorkItemId, u32>,
    /// The entries, in the order their items came.
    entries: Vec<ItemEntry>,
}

impl Items {
    /// The entry of `id`, if the ledger holds it.
    pub(super) fn get(&self, id: &WorkItemId) -> Option<&ItemEntry> {
        self.index.get(id).map(|&i| &self.entries[i as usize])
    }

    /// The entry of `id` to change, if the ledger holds it.
    pub(super) fn get_mut(&mut self, id: &WorkItemId) -> Option<&mut ItemEntry> {
        self.index.get(id).map(|&i| &mut self.entries[i as usize])
    }

    /// Whether the ledger holds `id`.
    pub(super) fn contains_key(&self, id: &WorkItemId) -> bool {
        self.index.contains_key(id)
    }

    /// Holds `entry` as the entry of its item, replacing (and answering) the one it had.
    fn insert(&mut self, entry: ItemEntry) -> Option<ItemEntry> {
        let id = entry.item.id;
        match self.index.get(&id) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i as usize], entry)),
            None => {
                let i = u32::try_from(self.entries.len()).expect("fewer than 2^32 work items");
                self.index.insert(id, i);
                self.entries.push(entry);
                None
            }
        }
    }

    /// Every entry, in the order the items came.
    pub(super) fn values(&self) -> impl Iterator<Item = &ItemEntry> {
        self.entries.iter()
    }

    /// Every item's id and entry, in the order the items came.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&WorkItemId, &ItemEntry)> {
        self.entries.iter().map(|e| (&e.item.id, e))
    }
}

impl Index<&WorkItemId> for Items {
    type Output = ItemEntry;

    fn index(&self, id: &WorkItemId) -> &ItemEntry {
        self.get(id).expect("every registered item has an entry")
    }
}

/// The key of a work item's `n`-th spawn: unique per (item, n), and independent of the order in
/// which the fleet's other items spawn, so a seeded simulation gives the same faults however its
/// threads interleave.
pub(super) fn spawn_key(item: WorkItemId, n: u32) -> SpawnKey {
    SpawnKey(mix64(item.0 ^ (u64::from(n) << 48)))
}

/// Work items, agent types and the queue, with the rules that move items between places.
#[derive(Default)]
pub(super) struct Ledger {
    /// The agent types work items may name, with their restart budgets.
    pub(super) agents: HashMap<Arc<str>, AgentEntry>,
    /// Every submitted work item and where it is.
    pub(super) items: Items,
    /// Items waiting for a session, in start order.
    pub(super) queue: VecDeque<WorkItemId>,
    /// How many items are [`Place::Starting`]: an index of `items`, kept by the only two
    /// functions that place an item ([`insert`](Self::insert) and
    /// [`set_place`](Self::set_place)), so it cannot drift from the places themselves.
    starting: usize,
}

impl Ledger {
    /// A ledger over these agent types, with no work items.
    pub(super) fn new(agents: Vec<AgentType>) -> Self {
        let agents = agents
            .into_iter()
            .map(|a| {
                (
                    a.name.clone(),
                    AgentEntry {
                        agent: Arc::new(a),
                        restarts: Spent::default(),
                        halted: false,
                    },
                )
            })
            .collect();
        Self {
            agents,
            ..Self::default()
        }
    }

    /// Creates or updates an agent type. An update may change only the policy (a different
    /// window, model or system prompt is a conflict: sessions of the type run with them); the
    /// type's restart budget and halt are kept. Answers what changed, and on an update the
    /// type as it now is.
    pub(super) fn put_agent(
        &mut self,
        agent: AgentType,
    ) -> Result<(PutOutcome, Arc<AgentType>), SupervisorError> {
        let Some(entry) = self.agents.get_mut(&agent.name) else {
            let agent = Arc::new(agent);
            self.agents.insert(
                agent.name.clone(),
                AgentEntry {
                    agent: agent.clone(),
                    restarts: Spent::default(),
                    halted: false,
                },
            );
            return Ok((PutOutcome::Created, agent));
        };
        let old = &entry.agent;
        let differs = [
            (old.window != agent.window, "window"),
            (old.model != agent.model, "model"),
            (old.system_prompt != agent.system_prompt, "system_prompt"),
        ];
        if let Some((_, what)) = differs.iter().find(|(d, _)| *d) {
            return Err(SupervisorError::AgentTypeConflict(format!(
                "agent type {:?} exists with another {what}; only its policy may change",
                agent.name
            )));
        }
        if old.policy == agent.policy {
            return Ok((PutOutcome::Unchanged, old.clone()));
        }
        entry.agent = Arc::new(agent);
        Ok((PutOutcome::Updated, entry.agent.clone()))
    }

    /// The entry of a registered item.
    pub(super) fn item(&mut self, id: WorkItemId) -> &mut ItemEntry {
        self.items
            .get_mut(&id)
            .expect("every registered item has an entry")
    }

    /// Whether `item` may be submitted: its agent type is known and its id is new.
    pub(super) fn check_submit(&self, item: &WorkItem) -> Result<(), SupervisorError> {
        if !self.agents.contains_key(&item.agent_type) {
            return Err(SupervisorError::UnknownAgentType(
                item.agent_type.to_string(),
            ));
        }
        if self.items.contains_key(&item.id) {
            return Err(SupervisorError::DuplicateWorkItem(item.id));
        }
        Ok(())
    }

    /// Registers a checked item as queued, at the back of the queue.
    pub(super) fn submit(&mut self, item: WorkItem) {
        let id = item.id;
        self.insert(id, ItemEntry::new(item, Place::Queued));
        self.queue.push_back(id);
    }

    /// Registers an entry (a submission, or an item recovered from the journal) under its
    /// item's id, `id`.
    pub(super) fn insert(&mut self, id: WorkItemId, entry: ItemEntry) {
        debug_assert_eq!(
            id, entry.item.id,
            "an entry is registered under its item's id"
        );
        self.starting += usize::from(entry.place == Place::Starting);
        if let Some(old) = self.items.insert(entry) {
            self.starting -= usize::from(old.place == Place::Starting);
        }
    }

    /// Moves an item to `place`.
    pub(super) fn set_place(&mut self, id: WorkItemId, place: Place) {
        let entry = self.item(id);
        let was = std::mem::replace(&mut entry.place, place);
        let is = entry.place == Place::Starting;
        self.starting = self.starting + usize::from(is) - usize::from(was == Place::Starting);
    }

    /// Items whose session is being started (a start, a resumed rotation, or a rotation's
    /// successor being committed): they count against `max_sessions` alongside the registry.
    pub(super) fn starting(&self) -> usize {
        self.starting
    }

    /// Takes the first queued item whose agent type is not halted off the queue.
    pub(super) fn next_startable(&mut self) -> Option<WorkItemId> {
        let (agents, items) = (&self.agents, &self.items);
        let pos = self
            .queue
            .iter()
            .position(|id| !agents[&items[id].item.agent_type].halted)?;
        self.queue.remove(pos)
    }

    /// Marks a taken item as starting and counts its spawn; answers the spawn's key and number.
    pub(super) fn begin_start(&mut self, id: WorkItemId) -> (SpawnKey, u32) {
        self.set_place(id, Place::Starting);
        let entry = self.item(id);
        entry.spawns += 1;
        (spawn_key(id, entry.spawns), entry.spawns)
    }

    /// Puts an item at the back of the queue.
    pub(super) fn requeue(&mut self, id: WorkItemId) {
        self.set_place(id, Place::Queued);
        self.queue.push_back(id);
    }

    /// Puts an item at the head of the queue (a restart within budget).
    pub(super) fn restart(&mut self, id: WorkItemId) {
        self.set_place(id, Place::Queued);
        self.queue.push_front(id);
    }

    /// Whether an item has used up its attempts.
    pub(super) fn attempts_spent(&self, id: WorkItemId, max_attempts: u32) -> bool {
        self.items[&id].attempts >= max_attempts
    }

    /// A live session of `id` crashed: counts an attempt and decides what happens to the item.
    /// Past `max_attempts` it goes to dead letter; otherwise it restarts if its agent type's
    /// restart budget allows (never while shutting down), or waits in the queue. (The caller
    /// carries the outcome out: [`restart`](Self::restart), a halt and
    /// [`requeue`](Self::requeue), or a burial.)
    pub(super) fn crash(
        &mut self,
        id: WorkItemId,
        max_attempts: u32,
        budget: Budget,
        shutting_down: bool,
        now: Instant,
    ) -> CrashOutcome {
        let agent_type = self.items[&id].item.agent_type.clone();
        self.item(id).attempts += 1;
        if self.attempts_spent(id, max_attempts) {
            CrashOutcome::DeadLetter
        } else if !shutting_down && self.spend_restart(&agent_type, budget, now) {
            CrashOutcome::Restarted
        } else {
            CrashOutcome::Requeued
        }
    }

    /// Takes one restart from the agent type's budget, if it allows one at `now`.
    pub(super) fn spend_restart(&mut self, agent_type: &str, budget: Budget, now: Instant) -> bool {
        self.agents
            .get_mut(agent_type)
            .expect("known agent type")
            .restarts
            .try_take(budget, now)
    }

    /// Halts an agent type: no more sessions of it start. True only the first time.
    pub(super) fn halt(&mut self, agent_type: &str) -> bool {
        let agent = self.agents.get_mut(agent_type).expect("known agent type");
        !std::mem::replace(&mut agent.halted, true)
    }

    /// Takes one rotation from the item's budget, if it allows one at `now`.
    pub(super) fn take_rotation(&mut self, id: WorkItemId, budget: Budget, now: Instant) -> bool {
        self.item(id).rotations().try_take(budget, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, agent_type: &str) -> WorkItem {
        WorkItem {
            id: WorkItemId(id),
            agent_type: agent_type.into(),
            text: String::new(),
        }
    }

    fn ledger() -> Ledger {
        let mut l = Ledger::new(vec![AgentType::new("a", 1000), AgentType::new("b", 1000)]);
        for (id, t) in [(1, "a"), (2, "b"), (3, "a")] {
            l.check_submit(&item(id, t)).unwrap();
            l.submit(item(id, t));
        }
        l
    }

    const EVERY_30S: Budget = Budget {
        count: 2,
        period: Duration::from_secs(30),
    };

    #[test]
    fn submissions_of_an_unknown_type_or_a_known_id_are_refused() {
        let l = ledger();
        assert_eq!(
            l.check_submit(&item(9, "c")),
            Err(SupervisorError::UnknownAgentType("c".into()))
        );
        assert_eq!(
            l.check_submit(&item(2, "a")),
            Err(SupervisorError::DuplicateWorkItem(WorkItemId(2)))
        );
    }

    #[test]
    fn an_agent_type_is_created_then_only_its_policy_may_change() {
        let mut l = ledger();
        let c = AgentType::new("c", 500);
        assert_eq!(l.put_agent(c.clone()).unwrap().0, PutOutcome::Created);
        assert_eq!(l.put_agent(c.clone()).unwrap().0, PutOutcome::Unchanged);
        let policy = crate::policy::Policy::builder()
            .compact_at(0.7)
            .build()
            .unwrap();
        let (outcome, now) = l.put_agent(c.clone().with_policy(policy.clone())).unwrap();
        assert_eq!((outcome, &*now.policy), (PutOutcome::Updated, &policy));
        assert_eq!(*l.agents["c"].agent.policy, policy);
        for other in [
            AgentType::new("c", 600),
            AgentType {
                model: "m".into(),
                ..c.clone()
            },
            AgentType {
                system_prompt: "p".into(),
                ..c.clone()
            },
        ] {
            assert!(matches!(
                l.put_agent(other),
                Err(SupervisorError::AgentTypeConflict(_))
            ));
        }
        assert_eq!(
            *l.agents["c"].agent.policy, policy,
            "a conflict changes nothing"
        );
    }

    #[test]
    fn items_start_in_submission_order_skipping_halted_types() {
        let mut l = ledger();
        assert!(l.halt("a"));
        assert!(!l.halt("a"), "a type halts once");
        assert_eq!(l.next_startable(), Some(WorkItemId(2)));
        assert_eq!(l.next_startable(), None, "items of a halted type wait");
        assert_eq!(l.queue, [WorkItemId(1), WorkItemId(3)]);
    }

    #[test]
    fn each_spawn_of_an_item_has_its_own_key_independent_of_other_items() {
        let mut l = ledger();
        let id = l.next_startable().unwrap();
        let (k1, n1) = l.begin_start(id);
        assert_eq!((l.items[&id].place.clone(), n1), (Place::Starting, 1));
        assert_eq!(l.starting(), 1);
        l.requeue(id);
        assert_eq!(l.starting(), 0);
        assert_eq!(l.queue.back(), Some(&id));
        let (k2, n2) = l.begin_start(id);
        assert_eq!(n2, 2);
        assert_ne!(k1, k2);
        assert_eq!(k1, spawn_key(id, 1), "the key depends on (item, n) only");
    }

    #[test]
    fn a_crash_restarts_within_the_budget_then_requeues_then_buries() {
        let mut l = ledger();
        let t0 = Instant::now();
        let id = WorkItemId(1);
        assert_eq!(
            l.crash(id, 4, EVERY_30S, false, t0),
            CrashOutcome::Restarted
        );
        l.restart(id);
        assert_eq!(l.queue.front(), Some(&id), "a restart goes first");
        assert_eq!(
            l.crash(id, 4, EVERY_30S, false, t0),
            CrashOutcome::Restarted
        );
        assert_eq!(
            l.crash(id, 4, EVERY_30S, false, t0),
            CrashOutcome::Requeued,
            "the type's budget is spent"
        );
        assert_eq!(
            l.crash(id, 4, EVERY_30S, false, t0),
            CrashOutcome::DeadLetter
        );
        // Later, the budget is back; while shutting down no restart is spent.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(
            l.crash(WorkItemId(3), 4, EVERY_30S, true, later),
            CrashOutcome::Requeued
        );
        assert_eq!(
            l.crash(WorkItemId(3), 4, EVERY_30S, false, later),
            CrashOutcome::Restarted
        );
    }

    #[test]
    fn an_item_rotates_at_most_its_budget_per_period() {
        let mut l = ledger();
        let t0 = Instant::now();
        let id = WorkItemId(2);
        assert!(l.take_rotation(id, EVERY_30S, t0));
        assert!(l.take_rotation(id, EVERY_30S, t0 + Duration::from_secs(1)));
        assert!(!l.take_rotation(id, EVERY_30S, t0 + Duration::from_secs(2)));
        assert!(l.take_rotation(id, EVERY_30S, t0 + Duration::from_secs(30)));
    }

    #[test]
    fn items_are_found_by_id_listed_in_arrival_order_and_replaced_in_place() {
        let mut l = ledger();
        let ids = |l: &Ledger| l.items.iter().map(|(id, _)| id.0).collect::<Vec<_>>();
        assert_eq!(ids(&l), [1, 2, 3]);
        assert_eq!(l.items[&WorkItemId(2)].item.agent_type.as_ref(), "b");
        assert!(l.items.get(&WorkItemId(4)).is_none() && !l.items.contains_key(&WorkItemId(4)));
        // A recovered entry replaces the submitted one where it was.
        let mut again = ItemEntry::new(item(2, "a"), Place::Dead("gone".into()));
        again.attempts = 2;
        l.insert(WorkItemId(2), again);
        assert_eq!(ids(&l), [1, 2, 3]);
        let e = &l.items[&WorkItemId(2)];
        assert_eq!((e.item.agent_type.as_ref(), e.attempts), ("a", 2));
        assert_eq!(l.items.values().count(), 3);
    }

    #[test]
    fn a_handoff_is_kept_and_forgotten_and_an_entry_stays_small() {
        let mut l = ledger();
        let e = l.item(WorkItemId(1));
        assert_eq!(e.handoff(), None);
        e.set_handoff(None);
        assert!(e.rare.is_none(), "forgetting nothing boxes nothing");
        let h = Handoff {
            text: "so far".into(),
            tokens: 2,
            fallback: false,
        };
        e.set_handoff(Some(h.clone()));
        assert_eq!(e.handoff(), Some(&h));
        e.set_handoff(None);
        assert_eq!(e.handoff(), None);
        // One entry per work item for the fleet's whole life: the rare parts are boxed (see
        // docs/performance.md).
        assert!(
            std::mem::size_of::<ItemEntry>() <= 88,
            "ItemEntry is {} bytes",
            std::mem::size_of::<ItemEntry>()
        );
    }

    #[test]
    fn the_count_of_starts_follows_the_places_through_every_move() {
        let mut l = ledger();
        let count = |l: &Ledger| {
            l.items
                .values()
                .filter(|e| *e.place() == Place::Starting)
                .count()
        };
        let (a, b) = (l.next_startable().unwrap(), l.next_startable().unwrap());
        l.begin_start(a);
        l.begin_start(b);
        assert_eq!((l.starting(), count(&l)), (2, 2));
        l.set_place(a, Place::Live(crate::vocab::SessionId(1)));
        l.set_place(b, Place::Starting);
        assert_eq!((l.starting(), count(&l)), (1, 1));
        l.set_place(a, Place::Starting);
        l.restart(b);
        l.set_place(b, Place::Dead("gone".into()));
        assert_eq!((l.starting(), count(&l)), (1, 1));
        let mut recovered = ItemEntry::new(item(9, "a"), Place::Starting);
        recovered.spawns = 2;
        l.insert(WorkItemId(9), recovered);
        l.insert(a, ItemEntry::new(item(1, "a"), Place::Queued));
        assert_eq!((l.starting(), count(&l)), (1, 1));
    }
}

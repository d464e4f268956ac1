//! The continuous batcher's pure core: which active units join the next UNet call. It knows nothing of
//! models or tensors, only each unit's size in UNet rows, a key for the tensor shapes it needs, and its next
//! timestep, so it is tested without a model.
//!
//! - **Joins and leaves.** A unit joins between steps (`join`) and leaves when it finishes or is cancelled
//!   (`leave`); the worker calls these only at step boundaries, so a step is never torn.
//! - **Limits.** One call carries at most `max_rows` rows. A unit larger than that runs alone (the worker sizes
//!   units below the limit, so that only happens when the limit is smaller than one image's rows).
//! - **Shapes.** Only units with the same key (latent size, text length) share a call.
//! - **Timesteps.** With [`TimestepSharing::PerRow`] (a UNet whose timestep input is `[B]`) units at any step
//!   share a call; with [`TimestepSharing::Shared`] (a scalar timestep) only units at the same timestep do.
//! - **Fairness.** The unit that has waited longest since it last stepped anchors the call, and the others
//!   follow in the same order while they fit, so every unit steps within as many calls as there are units.
//! - **Users first.** Background units (a fine-tune job's samples) come after every online unit (users'
//!   requests): an online unit anchors every call while one is active, and background units fill only what
//!   [`BackgroundRows`] allows beside it. A call of background units alone carries at most `alone` rows, so an
//!   online request that arrives waits for at most one such call.

/// How the UNet takes its timestep, which decides whether units at different steps can share a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSharing {
    /// `[B]`: one timestep per row.
    PerRow,
    /// A scalar: one timestep for the whole call.
    Shared,
}

/// How many rows of background work a UNet call may carry (#29).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackgroundRows {
    /// Beside online rows: the spare capacity of a call. On a GPU a few more rows cost little; on a CPU, whose
    /// UNet calls are compute-bound, every row lengthens the call and the users' wait.
    pub beside_online: usize,
    /// In a call with no online rows.
    pub alone: usize,
}

impl BackgroundRows {
    /// No limit beyond the call's own.
    pub fn unlimited() -> Self {
        BackgroundRows {
            beside_online: usize::MAX,
            alone: usize::MAX,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot<K> {
    id: u64,
    rows: usize,
    /// A fine-tune job's unit: it steps only in the room online units leave.
    background: bool,
    key: K,
    /// The next timestep's bits (f32 compared bit for bit: schedulers compute them the same way).
    timestep: u32,
    /// The planning round in which the unit joined or last stepped; the smallest goes first.
    served: u64,
}

/// Which active units step together. `K` is the key of tensor shapes that must match within a call.
#[derive(Debug, Clone)]
pub struct Planner<K> {
    max_rows: usize,
    sharing: TimestepSharing,
    background: BackgroundRows,
    round: u64,
    slots: Vec<Slot<K>>,
}

impl<K: PartialEq + Clone> Planner<K> {
    pub fn new(max_rows: usize, sharing: TimestepSharing) -> Self {
        Self::with_background(max_rows, sharing, BackgroundRows::unlimited())
    }

    pub fn with_background(max_rows: usize, sharing: TimestepSharing, background: BackgroundRows) -> Self {
        Planner {
            max_rows: max_rows.max(1),
            sharing,
            background,
            round: 0,
            slots: Vec::new(),
        }
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    pub fn sharing(&self) -> TimestepSharing {
        self.sharing
    }

    /// UNet rows of all active units.
    pub fn active_rows(&self) -> usize {
        self.slots.iter().map(|slot| slot.rows).sum()
    }

    /// UNet rows of the active online units (users' requests).
    pub fn online_rows(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| !slot.background)
            .map(|slot| slot.rows)
            .sum()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.slots.iter().any(|slot| slot.id == id)
    }

    /// Whether a unit of `rows` may join now: it fits beside the active units, or none is active (so that
    /// a unit larger than the limit still runs, alone).
    pub fn has_room(&self, rows: usize) -> bool {
        self.slots.is_empty() || self.active_rows() + rows <= self.max_rows
    }

    /// Adds an online unit at the next step boundary. Ids must be unique among the active units.
    pub fn join(&mut self, id: u64, rows: usize, key: K, timestep: f32) {
        self.join_unit(id, rows, key, timestep, false);
    }

    /// Adds a unit, online or background, at the next step boundary.
    pub fn join_unit(&mut self, id: u64, rows: usize, key: K, timestep: f32, background: bool) {
        debug_assert!(!self.contains(id), "unit {id} joined twice");
        self.slots.push(Slot {
            id,
            rows: rows.max(1),
            background,
            key,
            timestep: timestep.to_bits(),
            served: self.round,
        });
    }

    /// Records a unit's next timestep after it stepped.
    pub fn set_timestep(&mut self, id: u64, timestep: f32) {
        if let Some(slot) = self.slots.iter_mut().find(|slot| slot.id == id) {
            slot.timestep = timestep.to_bits();
        }
    }

    /// Removes a finished or cancelled unit; returns whether it was active.
    pub fn leave(&mut self, id: u64) -> bool {
        let before = self.slots.len();
        self.slots.retain(|slot| slot.id != id);
        self.slots.len() != before
    }

    /// The units of the next UNet call, anchor first, and marks them served. Empty when no unit is active.
    pub fn plan(&mut self) -> Vec<u64> {
        let mut order: Vec<usize> = (0..self.slots.len()).collect();
        order.sort_by_key(|&index| {
            let slot = &self.slots[index];
            (slot.background, slot.served, slot.id)
        });
        let Some(&anchor) = order.first() else {
            return Vec::new();
        };
        self.round += 1;
        let (key, timestep) = (self.slots[anchor].key.clone(), self.slots[anchor].timestep);
        let background_limit = if self.slots[anchor].background {
            self.background.alone
        } else {
            self.background.beside_online
        };
        let mut rows = self.slots[anchor].rows;
        let mut background_rows = if self.slots[anchor].background { rows } else { 0 };
        let mut chosen = vec![anchor];
        for &index in &order[1..] {
            let slot = &self.slots[index];
            let same_step = self.sharing == TimestepSharing::PerRow || slot.timestep == timestep;
            let room = rows + slot.rows <= self.max_rows
                && (!slot.background || background_rows.saturating_add(slot.rows) <= background_limit);
            if slot.key == key && same_step && room {
                rows += slot.rows;
                if slot.background {
                    background_rows += slot.rows;
                }
                chosen.push(index);
            }
        }
        for &index in &chosen {
            self.slots[index].served = self.round;
        }
        chosen.into_iter().map(|index| self.slots[index].id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner(max_rows: usize, sharing: TimestepSharing) -> Planner<u8> {
        Planner::new(max_rows, sharing)
    }

    #[test]
    fn every_active_unit_shares_one_call_when_it_fits() {
        let mut planner = planner(16, TimestepSharing::PerRow);
        planner.join(1, 2, 0, 999.0);
        planner.join(2, 4, 0, 500.0);
        planner.join(3, 8, 0, 1.0);
        assert_eq!(planner.plan(), vec![1, 2, 3]);
        assert_eq!(planner.active_rows(), 14);
    }

    #[test]
    fn a_unit_joins_at_the_next_boundary_and_leaves_when_done() {
        let mut planner = planner(16, TimestepSharing::PerRow);
        planner.join(1, 2, 0, 999.0);
        assert_eq!(planner.plan(), vec![1]);
        planner.join(2, 2, 0, 999.0);
        let next = planner.plan();
        assert_eq!(next.len(), 2);
        assert!(next.contains(&1) && next.contains(&2));
        assert!(planner.leave(1));
        assert!(!planner.leave(1), "a unit leaves once");
        assert_eq!(planner.plan(), vec![2]);
        assert!(planner.leave(2));
        assert!(planner.plan().is_empty());
    }

    #[test]
    fn calls_never_exceed_the_row_limit() {
        let mut planner = planner(8, TimestepSharing::PerRow);
        for id in 0..5 {
            planner.join(id, 4, 0, 999.0);
        }
        for _ in 0..20 {
            let call = planner.plan();
            assert_eq!(call.len(), 2, "two units of 4 rows fill 8");
        }
    }

    #[test]
    fn admission_waits_for_room_but_never_blocks_an_empty_batcher() {
        let mut planner = planner(8, TimestepSharing::PerRow);
        assert!(
            planner.has_room(32),
            "an oversized unit still runs when nothing else does"
        );
        planner.join(1, 32, 0, 999.0);
        assert!(!planner.has_room(2));
        assert_eq!(planner.plan(), vec![1], "it runs alone");
        planner.leave(1);
        planner.join(2, 6, 0, 999.0);
        assert!(planner.has_room(2));
        assert!(!planner.has_room(3));
    }

    #[test]
    fn no_unit_starves_under_contention() {
        // Five units, room for two per call: over many calls each one steps within every three calls.
        let mut planner = planner(8, TimestepSharing::PerRow);
        for id in 0..5 {
            planner.join(id, 4, 0, 999.0);
        }
        let mut last_seen = [0usize; 5];
        for call_index in 1..=60 {
            for id in planner.plan() {
                last_seen[id as usize] = call_index;
            }
            for (id, &seen) in last_seen.iter().enumerate() {
                assert!(
                    call_index - seen < 3,
                    "unit {id} waited since call {seen} at call {call_index}"
                );
            }
        }
    }

    #[test]
    fn a_newcomer_waits_at_most_one_round() {
        let mut planner = planner(4, TimestepSharing::PerRow);
        planner.join(1, 4, 0, 999.0);
        planner.join(2, 4, 0, 999.0);
        assert_eq!(planner.plan(), vec![1]);
        planner.join(3, 4, 0, 999.0);
        // 2 has not stepped yet; 3 joined in the round 1 last stepped in, and the older id breaks the tie.
        assert_eq!(planner.plan(), vec![2]);
        assert_eq!(planner.plan(), vec![1]);
        assert_eq!(planner.plan(), vec![3]);
        assert_eq!(planner.plan(), vec![2]);
    }

    #[test]
    fn shapes_never_mix_in_one_call() {
        let mut planner = planner(64, TimestepSharing::PerRow);
        planner.join(1, 2, 16, 999.0);
        planner.join(2, 2, 32, 999.0);
        planner.join(3, 2, 16, 999.0);
        assert_eq!(planner.plan(), vec![1, 3]);
        assert_eq!(planner.plan(), vec![2], "the other shape gets the next call");
        assert_eq!(planner.plan(), vec![1, 3]);
    }

    #[test]
    fn a_scalar_timestep_batches_only_units_at_the_same_step() {
        let mut planner = planner(64, TimestepSharing::Shared);
        planner.join(1, 2, 0, 999.0);
        planner.join(2, 2, 0, 999.0);
        planner.join(3, 2, 0, 950.0);
        assert_eq!(planner.plan(), vec![1, 2]);
        planner.set_timestep(1, 950.0);
        planner.set_timestep(2, 950.0);
        assert_eq!(planner.plan(), vec![3, 1, 2], "all three are at 950 now");
    }

    #[test]
    fn online_units_anchor_every_call_and_background_units_fill_only_the_spare_rows() {
        let limits = BackgroundRows {
            beside_online: 2,
            alone: 4,
        };
        let mut planner = Planner::with_background(16, TimestepSharing::PerRow, limits);
        // A job's units were there first.
        planner.join_unit(1, 2, 0u8, 999.0, true);
        planner.join_unit(2, 2, 0, 999.0, true);
        planner.join_unit(3, 2, 0, 999.0, true);
        assert_eq!(
            planner.plan(),
            vec![1, 2],
            "alone, background calls carry at most 4 rows"
        );
        planner.join(10, 2, 0, 999.0);
        planner.join(11, 2, 0, 999.0);
        assert_eq!(planner.online_rows(), 4);
        for _ in 0..6 {
            let call = planner.plan();
            assert_eq!(&call[..2], &[10, 11], "every online unit is in every call");
            assert_eq!(
                call.len(),
                3,
                "with one background unit beside them (2 spare rows): {call:?}"
            );
        }
        planner.leave(10);
        planner.leave(11);
        assert_eq!(
            planner.plan().len(),
            2,
            "without online units the job goes on, 4 rows a call"
        );
    }

    #[test]
    fn no_spare_rows_means_a_job_waits_while_users_are_served() {
        let limits = BackgroundRows {
            beside_online: 0,
            alone: 32,
        };
        let mut planner = Planner::with_background(32, TimestepSharing::PerRow, limits);
        planner.join_unit(1, 2, 0u8, 999.0, true);
        planner.join(2, 2, 0, 999.0);
        for _ in 0..5 {
            assert_eq!(planner.plan(), vec![2]);
        }
        planner.leave(2);
        assert_eq!(planner.plan(), vec![1]);
    }

    #[test]
    fn a_cancelled_unit_leaves_between_steps_and_the_others_go_on() {
        let mut planner = planner(16, TimestepSharing::PerRow);
        planner.join(1, 2, 0, 999.0);
        planner.join(2, 2, 0, 999.0);
        planner.join(3, 2, 0, 999.0);
        assert_eq!(planner.plan(), vec![1, 2, 3]);
        assert!(planner.leave(2));
        assert_eq!(planner.plan(), vec![1, 3]);
        assert_eq!(planner.active_rows(), 4);
    }
}

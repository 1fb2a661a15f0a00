//! [`Queue`]: the heap of queued jobs, indexed by what they need of a worker, so that a
//! scheduling pass finds the best job some free capacity can run without walking the jobs
//! that none can.
//!
//! Jobs are grouped by requirement class ([`Need`]: CPUs, memory and label set). Every job
//! of a class fits exactly the same capacity, so one fit check of a class's head job
//! answers for the whole class. Each class is a heap in queue order (priority, then
//! submission order), and `heads` orders the non-empty classes by their head. A pass
//! ([`Pass`]) walks `heads` from the best head down: a class whose head fits is popped
//! (and its next job takes its place in `heads`), a class whose head fits nothing is passed
//! over for the rest of the pass. Capacity only shrinks during a pass, so a class passed
//! over stays unrunnable until the pass ends. A pass costs O(log C) per job placed plus
//! O(log C) per class passed over (C classes), whatever the number of jobs queued in them;
//! jobs with no requirements are one class, so the common case is a few `BTreeSet` steps.
//!
//! The queue holds keys only; [`JobTable`](crate::job_table::JobTable) decides, from the job
//! itself, whether an entry is live (lazy deletion, see there).

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use hodei_core::spec::JobSpec;

use crate::job_table::QueueKey;

/// Labels in canonical form (sorted, without duplicates), so equal label sets are one class.
type Labels = Vec<(String, String)>;

/// A class's place in `Queue::classes` (reused once the class is gone).
type ClassId = usize;

/// The class of jobs with no requirements: always there, so the common case never looks a
/// class up or creates one.
const PLAIN: ClassId = 0;

/// The jobs of one requirement class, best first.
#[derive(Debug)]
struct Class {
    /// Where `by_need` files it, to remove it when it empties.
    resources: (u32, u64),
    labels: Labels,
    heap: BinaryHeap<QueueKey>,
}

/// Where a scheduling pass stands: the last class it passed over, if any.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    below: Option<(QueueKey, ClassId)>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Queue {
    /// The class of each requirement but none: (CPUs, memory), then label set. BTreeMaps:
    /// labels are user strings, which must not be able to choose hash collisions.
    by_need: BTreeMap<(u32, u64), BTreeMap<Labels, ClassId>>,
    /// Classes by id; `None` where a class emptied and was dropped (the plain one never is).
    classes: Vec<Option<Class>>,
    /// Ids of dropped classes, for reuse.
    vacant: Vec<ClassId>,
    /// Every non-empty class under its head's key.
    heads: BTreeSet<(QueueKey, ClassId)>,
}

impl Default for Queue {
    fn default() -> Self {
        let plain = Class {
            resources: (0, 0),
            labels: Vec::new(),
            heap: BinaryHeap::new(),
        };
        Self {
            by_need: BTreeMap::new(),
            classes: vec![Some(plain)],
            vacant: Vec::new(),
            heads: BTreeSet::new(),
        }
    }
}

impl Queue {
    /// Adds an entry for a job that needs what `spec` asks for.
    pub(crate) fn push(&mut self, key: QueueKey, spec: &JobSpec) {
        let class = self.class_of(spec);
        let Some(c) = self.classes.get_mut(class).and_then(Option::as_mut) else {
            return;
        };
        let old = c.heap.peek().copied();
        c.heap.push(key);
        if old.is_none_or(|o| key > o) {
            if let Some(o) = old {
                self.heads.remove(&(o, class));
            }
            self.heads.insert((key, class));
        }
    }

    /// The class for `spec`'s requirements, created if new.
    fn class_of(&mut self, spec: &JobSpec) -> ClassId {
        let resources = (spec.cpus, spec.memory);
        if resources == (0, 0) && spec.labels.is_empty() {
            return PLAIN;
        }
        let canonical = spec.labels.windows(2).all(|w| w[0] < w[1]);
        let sorted;
        let labels: &[(String, String)] = if canonical {
            &spec.labels
        } else {
            let mut l = spec.labels.clone();
            l.sort();
            l.dedup();
            sorted = l;
            &sorted
        };
        if let Some(id) = self.by_need.get(&resources).and_then(|m| m.get(labels)) {
            return *id;
        }
        let class = Class {
            resources,
            labels: labels.to_vec(),
            heap: BinaryHeap::new(),
        };
        let id = match self.vacant.pop() {
            Some(id) => {
                if let Some(slot) = self.classes.get_mut(id) {
                    *slot = Some(class);
                }
                id
            }
            None => {
                self.classes.push(Some(class));
                self.classes.len() - 1
            }
        };
        self.by_need
            .entry(resources)
            .or_default()
            .insert(labels.to_vec(), id);
        id
    }

    /// The next head for `pass` to look at: the best head of a class it has not passed over.
    pub(crate) fn peek(&self, pass: &Pass) -> Option<(QueueKey, ClassId)> {
        match pass.below {
            None => self.heads.last().copied(),
            Some(b) => self.heads.range(..b).next_back().copied(),
        }
    }

    /// `pass` passes over this class (its head fits nothing) for the rest of the pass.
    pub(crate) fn pass_over(pass: &mut Pass, head: (QueueKey, ClassId)) {
        pass.below = Some(head);
    }

    /// Removes the head `(key, class)` (taken, or a dead entry), moving the class's next
    /// entry into `heads`, or dropping the class if that was its last.
    pub(crate) fn pop(&mut self, head: (QueueKey, ClassId)) {
        let (key, class) = head;
        let Some(c) = self.classes.get_mut(class).and_then(Option::as_mut) else {
            return;
        };
        if c.heap.peek() != Some(&key) {
            return;
        }
        c.heap.pop();
        self.heads.remove(&head);
        if let Some(next) = c.heap.peek() {
            self.heads.insert((*next, class));
            return;
        }
        if class == PLAIN {
            return;
        }
        let Some(c) = self.classes.get_mut(class).and_then(Option::take) else {
            return;
        };
        self.vacant.push(class);
        if let Some(m) = self.by_need.get_mut(&c.resources) {
            m.remove(&c.labels);
            if m.is_empty() {
                self.by_need.remove(&c.resources);
            }
        }
    }

    /// Requirement classes kept (the plain one always).
    #[cfg(test)]
    pub(crate) fn classes(&self) -> usize {
        self.classes.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use hodei_core::ids::JobId;
    use hodei_core::spec::JobSpec;

    use super::{Pass, Queue};
    use crate::job_table::QueueKey;

    fn key(prio: i32, seq: u64) -> QueueKey {
        (prio, Reverse(seq), JobId::new(0, 1, seq))
    }

    fn labelled(labels: &[(&str, &str)]) -> JobSpec {
        let mut s = JobSpec::exec("/bin/true", &[]);
        s.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        s
    }

    /// A pass visits heads best first, passes over a class as a whole, and still finds the
    /// jobs of other classes behind it; one label set in any order is one class, and a
    /// class that empties is dropped, except the plain one.
    #[test]
    fn a_pass_skips_whole_classes_in_queue_order() {
        let mut q = Queue::default();
        let gpu = labelled(&[("gpu", "1"), ("os", "linux")]);
        let gpu_again = labelled(&[("os", "linux"), ("gpu", "1"), ("gpu", "1")]);
        let plain = labelled(&[]);
        for seq in 1..=1_000 {
            q.push(key(5, seq), if seq % 2 == 0 { &gpu } else { &gpu_again });
        }
        q.push(key(0, 2_000), &plain);
        q.push(key(0, 2_001), &plain);
        assert_eq!(
            q.classes(),
            2,
            "one label set in two orders made two classes"
        );
        let mut pass = Pass::default();
        let head = q.peek(&pass).map(|h| h.0);
        assert_eq!(head, Some(key(5, 1)));
        let Some(h) = q.peek(&pass) else {
            panic!("empty");
        };
        Queue::pass_over(&mut pass, h);
        let mut taken = Vec::new();
        while let Some(h) = q.peek(&pass) {
            taken.push(h.0);
            q.pop(h);
        }
        assert_eq!(taken, vec![key(0, 2_000), key(0, 2_001)]);
        assert_eq!(q.classes(), 2, "the plain class is dropped");
        assert_eq!(q.peek(&Pass::default()).map(|h| h.0), Some(key(5, 1)));
        while let Some(h) = q.peek(&Pass::default()) {
            q.pop(h);
        }
        assert_eq!(q.classes(), 1, "an emptied class is kept");
    }
}

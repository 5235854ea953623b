//! Event-driven scheduling of the operation graph with integer-ns timestamps.
//!
//! An operation becomes ready when its last predecessor completes and joins the queue of its
//! resource; a free resource starts the oldest operation waiting for it (first come, first
//! served; ties in time go by operation number, so the result never depends on anything but the
//! graph). It holds the resource for its busy time and completes after its travel time. Events
//! are kept in one binary heap ordered by (time, kind, id): every run gives the same schedule.

use super::graph::Graph;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// When every operation ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Start of each operation on its resource.
    pub start: Vec<u64>,
    /// Completion of each operation (end of busy time plus travel).
    pub done: Vec<u64>,
    /// Events processed.
    pub events: u64,
}

impl Schedule {
    /// Time the last operation completes.
    pub fn end(&self) -> u64 {
        self.done.iter().copied().max().unwrap_or(0)
    }
}

const RELEASE: u8 = 0;
const COMPLETE: u8 = 1;

/// Runs `graph`; `progress(done, total)` is called every 65536 completed operations.
pub fn simulate(graph: &Graph, progress: &mut dyn FnMut(usize, usize)) -> Schedule {
    let n = graph.len();
    let mut remaining = graph.preds.clone();
    let mut start = vec![0u64; n];
    let mut done = vec![0u64; n];
    let n_res = graph.resources.len();
    let mut busy = vec![false; n_res];
    let mut queues: Vec<VecDeque<u32>> = vec![VecDeque::new(); n_res];
    let mut heap: BinaryHeap<Reverse<(u64, u8, u32)>> = BinaryHeap::new();
    let mut events = 0u64;
    let mut completed = 0usize;

    let launch = |op: u32,
                  t: u64,
                  busy: &mut [bool],
                  start: &mut [u64],
                  heap: &mut BinaryHeap<Reverse<(u64, u8, u32)>>| {
        let i = op as usize;
        let r = graph.resource[i];
        busy[r as usize] = true;
        start[i] = t;
        let free = t + u64::from(graph.busy_ns[i]);
        heap.push(Reverse((free, RELEASE, r)));
        heap.push(Reverse((free + u64::from(graph.tail_ns[i]), COMPLETE, op)));
    };
    let arrive = |op: u32,
                  t: u64,
                  busy: &mut [bool],
                  queues: &mut [VecDeque<u32>],
                  start: &mut [u64],
                  heap: &mut BinaryHeap<Reverse<(u64, u8, u32)>>| {
        let r = graph.resource[op as usize] as usize;
        if busy[r] {
            queues[r].push_back(op);
        } else {
            launch(op, t, busy, start, heap);
        }
    };

    let sources: Vec<u32> = (0..n as u32)
        .filter(|&op| remaining[op as usize] == 0)
        .collect();
    for op in sources {
        arrive(op, 0, &mut busy, &mut queues, &mut start, &mut heap);
    }
    while let Some(Reverse((t, kind, id))) = heap.pop() {
        events += 1;
        if kind == RELEASE {
            let r = id as usize;
            busy[r] = false;
            if let Some(op) = queues[r].pop_front() {
                launch(op, t, &mut busy, &mut start, &mut heap);
            }
            continue;
        }
        done[id as usize] = t;
        completed += 1;
        if completed % 65536 == 0 {
            progress(completed, n);
        }
        for &s in graph.successors(id as usize) {
            let si = s as usize;
            remaining[si] -= 1;
            if remaining[si] == 0 {
                arrive(s, t, &mut busy, &mut queues, &mut start, &mut heap);
            }
        }
    }
    progress(completed, n);
    Schedule {
        start,
        done,
        events,
    }
}

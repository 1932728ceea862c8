//! Fault schedules drawn from a seed: the same seed gives the same list of faults, their
//! targets and their timing, so a failing run can be replayed.

use std::time::Duration;

use crate::Rng;
use crate::proxy::{Faults, NodeId};
use crate::unsynced::Survival;

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// This node.
    Node(NodeId),
    /// Whoever leads when the fault starts.
    Leader,
}

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGKILL, then a restart on the same data directory when the fault ends.
    Kill(Target),
    /// A power loss: SIGKILL, the node's unsynced writes undone (all, or all but a torn
    /// subset), a restart when it ends.
    PowerLoss(Target, Survival),
    /// Every node loses power at once (a rack or a data centre); all restart when it ends.
    /// With a torn subset surviving, each node's is drawn from its own seed.
    PowerLossAll(Survival),
    /// The node's disk fills up (no file may grow); room again when it ends, and a restart
    /// if the node stopped.
    DiskFull(Target),
    /// SIGSTOP, then SIGCONT when the fault ends.
    Pause(Target),
    /// Network faults between nodes (partitions, loss, delay, duplication) until it ends.
    Network(Faults),
}

/// A fault, when it starts and how long it lasts.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Start, from the beginning of the run.
    pub at: Duration,
    /// Duration.
    pub lasts: Duration,
    /// What.
    pub fault: Fault,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.fault {
            Fault::Kill(t) => format!("kill -9 {t:?}, restart"),
            Fault::PowerLoss(t, s) => format!("power loss {t:?}{}, restart", torn(s)),
            Fault::PowerLossAll(s) => format!("power loss of every node{}, restart", torn(s)),
            Fault::DiskFull(t) => format!("disk full {t:?}, room again"),
            Fault::Pause(t) => format!("SIGSTOP {t:?}, SIGCONT"),
            Fault::Network(n) => {
                let mut blocked: Vec<_> = n.blocked.iter().collect();
                blocked.sort();
                format!(
                    "network: blocked {blocked:?}, loss {:.0}%, duplicate {:.0}%, delay ≤ {:?}",
                    n.loss * 100.0,
                    n.duplicate * 100.0,
                    n.max_delay
                )
            }
        };
        write!(
            f,
            "{:>6.1} s for {:.1} s: {what}",
            self.at.as_secs_f64(),
            self.lasts.as_secs_f64()
        )
    }
}

fn torn(s: &Survival) -> &'static str {
    match s {
        Survival::Nothing => "",
        Survival::Torn(_) => " (a torn subset of unsynced writes survives)",
    }
}

/// Half the power losses keep a torn subset of the unsynced writes.
fn survival(rng: &mut Rng) -> Survival {
    if rng.chance(0.5) {
        Survival::Torn(rng.next_u64())
    } else {
        Survival::Nothing
    }
}

/// Faults one after another for `run`: a quiet gap of 0.5–2 s, then a fault of 1–4 s. With
/// five nodes or more, partitions may also split off a minority of two.
pub fn draw(seed: u64, nodes: &[NodeId], run: Duration) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut steps = Vec::new();
    let mut at = Duration::from_millis(500 + rng.below(1500));
    while at < run {
        let lasts = Duration::from_millis(1000 + rng.below(3000));
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        let target = if rng.chance(0.4) {
            Target::Leader
        } else {
            Target::Node(node)
        };
        let fault = match rng.below(10) {
            0 | 1 => Fault::Kill(target),
            9 => Fault::DiskFull(target),
            2 => Fault::PowerLoss(target, survival(&mut rng)),
            3 => Fault::PowerLossAll(survival(&mut rng)),
            4 => Fault::Pause(target),
            5 if nodes.len() >= 5 && rng.chance(0.5) => {
                let other = nodes[rng.below(nodes.len() as u64) as usize];
                let minority = if other == node {
                    vec![node]
                } else {
                    vec![node, other]
                };
                Fault::Network(Faults::split(&minority, nodes))
            }
            5 => Fault::Network(Faults::isolate(node, nodes)),
            6 => {
                // One way only: `node` hears the others but cannot answer.
                let mut f = Faults::healthy();
                for &o in nodes.iter().filter(|&&o| o != node) {
                    f.blocked.insert((node, o));
                }
                Fault::Network(f)
            }
            7 if nodes.len() >= 3 => {
                let (left, right) = nodes.split_at(nodes.len() / 2 + 1);
                Fault::Network(Faults::bridge(left[left.len() - 1], left, right))
            }
            _ => Fault::Network(Faults {
                loss: 0.05 + (rng.below(20) as f64) / 100.0,
                duplicate: (rng.below(15) as f64) / 100.0,
                max_delay: Duration::from_millis(rng.below(30)),
                ..Faults::healthy()
            }),
        };
        steps.push(Step { at, lasts, fault });
        at += lasts + Duration::from_millis(500 + rng.below(1500));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule_and_seeds_differ() {
        let nodes = [1, 2, 3];
        let run = Duration::from_secs(30);
        assert_eq!(draw(7, &nodes, run), draw(7, &nodes, run));
        assert_ne!(draw(7, &nodes, run), draw(8, &nodes, run));
        let steps = draw(7, &nodes, run);
        assert!(steps.len() >= 5, "{steps:?}");
        // Every kind of fault comes up within a few seeds.
        let kinds: std::collections::HashSet<_> = (0..40)
            .flat_map(|seed| draw(seed, &nodes, run))
            .map(|s| std::mem::discriminant(&s.fault))
            .collect();
        assert_eq!(
            kinds.len(),
            6,
            "kill, power loss, all, disk full, pause, network"
        );
        // Five nodes: some schedules split off a minority of two (2 × 3 pairs, both ways).
        let five = [1, 2, 3, 4, 5];
        assert!(
            (0..40)
                .flat_map(|seed| draw(seed, &five, run))
                .any(|s| { matches!(&s.fault, Fault::Network(f) if f.blocked.len() == 12) })
        );
        assert!(steps.iter().all(|s| s.at < run));
        assert!(
            steps.windows(2).all(|w| w[0].at + w[0].lasts < w[1].at),
            "faults do not overlap"
        );
    }
}

//! The network: a router mesh on each chip and a chain of links between chips.
//!
//! A transfer occupies the port it leaves through for its serialization time (bits / link
//! width) and then travels one router latency per hop without holding the port (wormhole
//! routing), so a port's queue shows contention while distance only adds latency. Energy is
//! paid per bit and per hop.

use super::config::NetworkConfig;

/// Timing and energy of one transfer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    /// Time the sending port (or chip link) is occupied.
    pub busy_ns: u32,
    /// Travel time after the port is released.
    pub tail_ns: u32,
    /// Energy of the transfer.
    pub energy_pj: f64,
}

/// Whole nanoseconds covering `x` (timestamps are integers; durations round up, never to 0 for
/// real work below 1 ns of rounding noise).
pub fn ns(x: f64) -> u32 {
    (x - 1e-9).ceil().max(0.0) as u32
}

/// A transfer of `bits` on the mesh whose farthest receiver is `max_hops` away; `bit_hops` is
/// the sum over receivers of bits x hops.
pub fn mesh(net: &NetworkConfig, bits: u64, bit_hops: f64, max_hops: u32) -> Transfer {
    Transfer {
        busy_ns: ns(bits as f64 / net.link_bits_per_ns),
        tail_ns: ns(f64::from(max_hops) * net.t_hop_ns),
        energy_pj: bit_hops * net.e_bit_hop_pj,
    }
}

/// A transfer of `bits` across `links` chip-to-chip links.
pub fn chip_link(net: &NetworkConfig, bits: u64, links: usize) -> Transfer {
    Transfer {
        busy_ns: ns(bits as f64 / net.chip_link_bits_per_ns),
        tail_ns: ns(links as f64 * net.t_chip_link_ns),
        energy_pj: bits as f64 * links as f64 * net.e_bit_chip_link_pj,
    }
}

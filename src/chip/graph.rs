//! The per-token operation graph of prefill and decode on a placed model.
//!
//! Every token walks the layers: norm, broadcast to the q/k/v tiles, their MVMs (crossbar, ADC,
//! post-processing), the send back, RoPE, KV cache write and read, the attention products and
//! softmax, o_proj, residual, norm, gate/up, SiLU x up, down, residual. Prompt tokens are all
//! available at once and flow through the layers as a pipeline (only the last one goes through
//! lm_head); every generated token waits for the previous one's sample. Each operation names
//! the one resource it occupies, for how long, and its extra travel time; its energy is booked
//! here, by component, phase and layer, because energy does not depend on when it happens.

use super::config::ChipConfig;
use super::digital::{Shapes, Unit};
use super::mapping::{ChipMap, Stage};
use super::network::{self, ns, Transfer};
use crate::executor::ModelConfig;
use crate::tile::TileCostModel;
use serde::Serialize;

/// What a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResKind {
    /// The crossbars of a tile group (landing, drive, integration).
    Xbar,
    /// The ADCs of a tile group.
    Adc,
    /// The local digital units of a tile group (post-processing, reduction, output port).
    TilePost,
    /// The digital cluster's port into the mesh (broadcasts to tiles).
    PortOut,
    /// The digital cluster's port from the mesh (tile outputs).
    PortIn,
    /// A chip-to-chip link.
    ChipLink,
    /// A pool of digital units.
    Digital(Unit),
}

/// One resource with a queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    /// Its kind.
    pub kind: ResKind,
    /// The chip it is on (a link: the lower of the two chips).
    pub chip: usize,
    /// Tiles it stands for (tile-group resources), else 1.
    pub tiles: usize,
    /// Its tile group, if any.
    pub group: Option<usize>,
}

/// Energy components, in report order.
pub const COMPONENTS: [&str; 10] = [
    "drive",
    "array",
    "adc",
    "tile_digital",
    "attention",
    "softmax",
    "norm",
    "kv_cache",
    "other",
    "network",
];

/// An energy component (index into [`COMPONENTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// DACs and word-line drive.
    Drive = 0,
    /// The crossbar arrays.
    Array,
    /// The ADCs.
    Adc,
    /// Tile post-processing and partial-sum reduction.
    TileDigital,
    /// Attention products.
    Attention,
    /// Softmax.
    Softmax,
    /// Norms.
    Norm,
    /// KV cache.
    KvCache,
    /// Other digital work.
    Other,
    /// Mesh and chip links.
    Network,
}

impl Component {
    fn of(unit: Unit) -> Self {
        match unit {
            Unit::Attention => Component::Attention,
            Unit::Softmax => Component::Softmax,
            Unit::Norm => Component::Norm,
            Unit::KvCache => Component::KvCache,
            Unit::Other => Component::Other,
        }
    }
}

/// Energy of every component.
pub type Energy = [f64; 10];

/// No operation.
pub const NONE: u32 = u32::MAX;

/// The operation graph, in structure-of-arrays form.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Resource of each operation.
    pub resource: Vec<u32>,
    /// Time each operation occupies its resource.
    pub busy_ns: Vec<u32>,
    /// Travel time after the resource is released.
    pub tail_ns: Vec<u32>,
    /// Token of each operation.
    pub token: Vec<u32>,
    /// Layer of each operation (the number of layers: embedding, final norm, lm_head, sample).
    pub layer: Vec<u16>,
    /// Successors of operation i: `succ[succ_start[i]..succ_start[i + 1]]`.
    pub succ_start: Vec<u32>,
    /// Successor lists.
    pub succ: Vec<u32>,
    /// Number of predecessors.
    pub preds: Vec<u32>,
    /// The resources.
    pub resources: Vec<Resource>,
    /// Energy per (phase, layer): index `phase * (layers + 1) + layer`, phase 0 = prefill.
    pub energy: Vec<Energy>,
    /// Per token and layer (and last: the head) the operation that finishes it (`NONE` for the
    /// head of prompt tokens other than the last).
    pub layer_out: Vec<u32>,
    /// Per token its embedding lookup (the start of the token).
    pub embed: Vec<u32>,
    /// Decoder layers.
    pub layers: usize,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Generated tokens (decode steps).
    pub gen_len: usize,
}

impl Graph {
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.resource.len()
    }

    /// Whether there is no operation.
    pub fn is_empty(&self) -> bool {
        self.resource.is_empty()
    }

    /// Successors of `op`.
    pub fn successors(&self, op: usize) -> &[u32] {
        &self.succ[self.succ_start[op] as usize..self.succ_start[op + 1] as usize]
    }

    /// The operation finishing layer `layer` of token `token`.
    pub fn out_of(&self, token: usize, layer: usize) -> u32 {
        self.layer_out[token * (self.layers + 1) + layer]
    }
}

/// Resources per chip: out port, in port and the five digital pools.
const PER_CHIP: usize = 2 + Unit::ALL.len();

struct Builder<'a> {
    chip: &'a ChipConfig,
    map: &'a ChipMap,
    cost: &'a TileCostModel,
    shapes: Shapes,
    g: Graph,
    edges: Vec<(u32, u32)>,
    /// Per layer (and head) per stage: its tile groups.
    stage_groups: Vec<[Vec<usize>; 5]>,
    chip_base: usize,
    link_base: usize,
    token: u32,
    layer: u16,
    phase: usize,
}

fn stage_index(s: Stage) -> usize {
    match s {
        Stage::Qkv => 0,
        Stage::Out => 1,
        Stage::GateUp => 2,
        Stage::Down => 3,
        Stage::Head => 4,
    }
}

impl Builder<'_> {
    fn op(&mut self, res: usize, busy: u32, tail: u32, deps: &[u32]) -> u32 {
        let id = self.g.resource.len() as u32;
        self.g.resource.push(res as u32);
        self.g.busy_ns.push(busy);
        self.g.tail_ns.push(tail);
        self.g.token.push(self.token);
        self.g.layer.push(self.layer);
        let mut n = 0;
        for &d in deps.iter().filter(|&&d| d != NONE) {
            self.edges.push((d, id));
            n += 1;
        }
        self.g.preds.push(n);
        id
    }

    fn charge(&mut self, c: Component, pj: f64) {
        let i = self.phase * (self.g.layers + 1) + self.layer as usize;
        self.g.energy[i][c as usize] += pj;
    }

    fn chip_res(&self, chip: usize, k: usize) -> usize {
        self.chip_base + chip * PER_CHIP + k
    }

    fn digital(&mut self, unit: Unit, chip: usize, ops: u64, deps: &[u32]) -> u32 {
        let u = unit.config(self.chip);
        let k = 2 + Unit::ALL.iter().position(|&x| x == unit).unwrap_or(0);
        let res = self.chip_res(chip, k);
        self.charge(Component::of(unit), ops as f64 * u.e_op_pj);
        self.op(res, ns(ops as f64 / u.pool_ops_per_ns()), 0, deps)
    }

    fn transfer(&mut self, res: usize, t: Transfer, deps: &[u32]) -> u32 {
        self.charge(Component::Network, t.energy_pj);
        self.op(res, t.busy_ns, t.tail_ns, deps)
    }

    /// Moves `bits` from chip `from` to chip `to` (nothing when they are the same).
    fn cross(&mut self, from: usize, to: usize, bits: u64, dep: u32) -> u32 {
        if from == to {
            return dep;
        }
        let t = network::chip_link(&self.chip.network, bits, from.abs_diff(to));
        self.transfer(self.link_base + from.min(to), t, &[dep])
    }

    /// The MVMs of one stage of layer `layer` on input of `in_features` ready after `input`;
    /// returns the operations that deliver the outputs to the layer's cluster.
    fn analog(&mut self, layer: usize, stage: Stage, input: u32, in_features: usize) -> Vec<u32> {
        let chip = self.map.layer_chip[layer];
        let groups = self.stage_groups[layer][stage_index(stage)].clone();
        let bits = in_features as u64 * u64::from(self.cost.dac_bits);
        let max_hops = groups
            .iter()
            .map(|&g| self.map.groups[g].max_hops)
            .max()
            .unwrap_or(0);
        let net = self.chip.network;
        let bit_hops: f64 = groups.iter().map(|&g| self.map.groups[g].in_bit_hops).sum();
        let bcast = self.transfer(
            self.chip_res(chip, 0),
            network::mesh(&net, bits, bit_hops, max_hops),
            &[input],
        );
        let mut done = Vec::with_capacity(groups.len());
        // One copy of the input crosses to each other chip, whatever the groups there.
        let mut remote: Vec<(usize, u32)> = Vec::new();
        for gi in groups {
            let g = &self.map.groups[gi];
            let (c, g_chip, out_bits) = (g.cost, g.chip, g.out_bits);
            let (hops, out_bit_hops) = (g.max_hops, g.out_bit_hops);
            let src = match remote.iter().find(|r| r.0 == g_chip) {
                Some(&(_, op)) => op,
                None => {
                    let op = self.cross(chip, g_chip, bits, bcast);
                    remote.push((g_chip, op));
                    op
                }
            };
            let base = 3 * gi;
            self.charge(Component::Drive, c.dac_pj);
            self.charge(Component::Array, c.array_pj);
            let xbar = self.op(base, ns(c.xbar_ns()), 0, &[src]);
            self.charge(Component::Adc, c.adc_pj);
            let adc = self.op(base + 1, ns(c.adc_tail_ns()), 0, &[xbar]);
            self.charge(Component::TileDigital, c.post_pj + c.reduce_pj);
            let post_ns = c.post_ns + c.reduce_ns + c.send_ns;
            let post = self.op(base + 2, ns(post_ns), 0, &[adc]);
            let back = self.cross(g_chip, chip, out_bits, post);
            let t = network::mesh(&net, out_bits, out_bit_hops, hops);
            done.push(self.transfer(self.chip_res(chip, 1), t, &[back]));
        }
        done
    }

    /// One decoder layer of the current token; `x` delivers its input on chip `from`.
    fn layer(&mut self, l: usize, x: u32, from: usize, last_kv_write: &mut [u32], len: u64) -> u32 {
        let s = self.shapes;
        let chip = self.map.layer_chip[l];
        let act = self.chip.activation_bits as u64;
        let x = self.cross(from, chip, s.hidden * act, x);
        let n1 = self.digital(Unit::Norm, chip, s.hidden, &[x]);
        let qkv = self.analog(l, Stage::Qkv, n1, s.hidden as usize);
        let rope = self.digital(Unit::Other, chip, s.rope(), &qkv);
        let previous = last_kv_write[l];
        // The past keys and values (written by the previous token) are fetched while the
        // projections run.
        let kvr = self.digital(Unit::KvCache, chip, s.kv_read_bytes(len), &[x, previous]);
        let kvw = self.digital(Unit::KvCache, chip, s.kv_write_bytes(), &[rope, previous]);
        last_kv_write[l] = kvw;
        let qk = self.digital(Unit::Attention, chip, s.score_macs(len), &[kvr, kvw]);
        let sm = self.digital(Unit::Softmax, chip, s.softmax(len), &[qk]);
        let av = self.digital(Unit::Attention, chip, s.score_macs(len), &[sm]);
        let o = self.analog(l, Stage::Out, av, s.hidden as usize);
        let r1 = self.digital(Unit::Other, chip, s.hidden, &o);
        let n2 = self.digital(Unit::Norm, chip, s.hidden, &[r1]);
        let gu = self.analog(l, Stage::GateUp, n2, s.hidden as usize);
        let a = self.digital(Unit::Other, chip, s.inter, &gu);
        let down = self.analog(l, Stage::Down, a, s.inter as usize);
        self.digital(Unit::Other, chip, s.hidden, &down)
    }

    /// Final norm, lm_head (analog, or on the attention units when digital) and the sample.
    fn head(&mut self, x: u32, from: usize) -> u32 {
        let s = self.shapes;
        let n = self.g.layers;
        let chip = self.map.layer_chip[n];
        let act = self.chip.activation_bits as u64;
        let x = self.cross(from, chip, s.hidden * act, x);
        let nf = self.digital(Unit::Norm, chip, s.hidden, &[x]);
        let logits = if self.stage_groups[n][stage_index(Stage::Head)].is_empty() {
            vec![self.digital(Unit::Attention, chip, s.vocab * s.hidden, &[nf])]
        } else {
            self.analog(n, Stage::Head, nf, s.hidden as usize)
        };
        self.digital(Unit::Other, chip, s.vocab, &logits)
    }
}

/// Builds the graph of a prompt of `prompt_len` tokens and `gen_len` decode steps.
pub fn build(
    config: &ModelConfig,
    cost: &TileCostModel,
    chip: &ChipConfig,
    map: &ChipMap,
    prompt_len: usize,
    gen_len: usize,
) -> Graph {
    let layers = config.num_hidden_layers as usize;
    let mut resources = Vec::new();
    for (gi, g) in map.groups.iter().enumerate() {
        for kind in [ResKind::Xbar, ResKind::Adc, ResKind::TilePost] {
            resources.push(Resource {
                kind,
                chip: g.chip,
                tiles: g.tiles,
                group: Some(gi),
            });
        }
    }
    let chip_base = resources.len();
    for c in 0..map.chips {
        let kinds = [ResKind::PortOut, ResKind::PortIn]
            .into_iter()
            .chain(Unit::ALL.iter().map(|&u| ResKind::Digital(u)));
        for kind in kinds {
            resources.push(Resource {
                kind,
                chip: c,
                tiles: 1,
                group: None,
            });
        }
    }
    let link_base = resources.len();
    for c in 0..map.chips.saturating_sub(1) {
        resources.push(Resource {
            kind: ResKind::ChipLink,
            chip: c,
            tiles: 1,
            group: None,
        });
    }
    let mut stage_groups = vec![<[Vec<usize>; 5]>::default(); layers + 1];
    for (gi, g) in map.groups.iter().enumerate() {
        let p = &map.projections[g.projection];
        stage_groups[p.layer][stage_index(p.stage)].push(gi);
    }
    let tokens = prompt_len + gen_len;
    let mut b = Builder {
        chip,
        map,
        cost,
        shapes: Shapes::new(config, chip.activation_bits),
        g: Graph {
            resource: Vec::new(),
            busy_ns: Vec::new(),
            tail_ns: Vec::new(),
            token: Vec::new(),
            layer: Vec::new(),
            succ_start: Vec::new(),
            succ: Vec::new(),
            preds: Vec::new(),
            resources,
            energy: vec![[0.0; 10]; 2 * (layers + 1)],
            layer_out: vec![NONE; tokens * (layers + 1)],
            embed: Vec::with_capacity(tokens),
            layers,
            prompt_len,
            gen_len,
        },
        edges: Vec::new(),
        stage_groups,
        chip_base,
        link_base,
        token: 0,
        layer: 0,
        phase: 0,
    };
    let mut last_kv_write = vec![NONE; layers];
    let mut last_sample = NONE;
    let head_chip = map.layer_chip[layers];
    let act = chip.activation_bits as u64;
    for t in 0..tokens {
        b.token = t as u32;
        b.phase = usize::from(t >= prompt_len);
        b.layer = layers as u16;
        let first = map.layer_chip[0];
        let dep = if t >= prompt_len {
            // A generated token's id comes back from the head's chip.
            b.cross(head_chip, first, act, last_sample)
        } else {
            NONE
        };
        let mut x = b.digital(Unit::Other, first, b.shapes.hidden, &[dep]);
        b.g.embed.push(x);
        let mut from = first;
        for l in 0..layers {
            b.layer = l as u16;
            x = b.layer(l, x, from, &mut last_kv_write, t as u64 + 1);
            from = map.layer_chip[l];
            b.g.layer_out[t * (layers + 1) + l] = x;
        }
        if t + 1 >= prompt_len {
            b.layer = layers as u16;
            last_sample = b.head(x, from);
            b.g.layer_out[t * (layers + 1) + layers] = last_sample;
        }
    }
    let mut g = b.g;
    let n = g.resource.len();
    // Successor lists in CSR form, each in the order its edges were made.
    let mut start = vec![0u32; n + 1];
    for &(from, _) in &b.edges {
        start[from as usize + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut succ = vec![0u32; b.edges.len()];
    for &(from, to) in &b.edges {
        succ[fill[from as usize] as usize] = to;
        fill[from as usize] += 1;
    }
    g.succ = succ;
    g.succ_start = start;
    g
}

//! `afm tile ...`: presets and single-layer analog MVMs.

use afm::rng::{Effect, StreamKey};
use afm::tile::{analog_mvm, resolve_preset_path, AnalogLayer, TilePreset};
use anyhow::Context;
use clap::Subcommand;
use std::time::Instant;

/// Tile subcommands.
#[derive(Debug, Subcommand)]
pub enum TileCommand {
    /// Print a preset with every default filled in.
    Show {
        /// Preset file or name in `tiles/` (e.g. afm-paper).
        preset: String,
    },
    /// Program a random weight matrix onto tiles, run MVMs and report the error.
    Mvm {
        /// Preset file or name in `tiles/`.
        preset: String,
        /// Input features of the weight (crossbar rows used).
        #[arg(long, default_value_t = 2048)]
        rows: usize,
        /// Output features of the weight (crossbar columns used).
        #[arg(long, default_value_t = 2048)]
        cols: usize,
        /// Input vectors per MVM batch.
        #[arg(long, default_value_t = 64)]
        tokens: usize,
        /// Chip seed: programming noise and data.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Input range of each row block as kappa x std of its inputs (default: the abs-max).
        #[arg(long)]
        kappa: Option<f32>,
    },
}

/// Runs a tile subcommand.
pub fn run(cmd: TileCommand) -> anyhow::Result<()> {
    match cmd {
        TileCommand::Show { preset } => {
            let p = load(&preset)?;
            println!("{}", p.to_toml().trim_end());
            Ok(())
        }
        TileCommand::Mvm {
            preset,
            rows,
            cols,
            tokens,
            seed,
            kappa,
        } => mvm(&preset, rows, cols, tokens, seed, kappa),
    }
}

fn load(arg: &str) -> anyhow::Result<TilePreset> {
    let path = resolve_preset_path(arg);
    Ok(TilePreset::load(&path)?)
}

struct ErrorStats {
    rel_rms: f64,
    snr_db: f64,
    max_abs: f64,
}

fn compare(y: &[f32], exact: &[f32]) -> ErrorStats {
    let (mut e2, mut s2, mut max_abs) = (0f64, 0f64, 0f64);
    for (a, b) in y.iter().zip(exact) {
        let d = f64::from(a - b);
        e2 += d * d;
        s2 += f64::from(*b) * f64::from(*b);
        max_abs = max_abs.max(d.abs());
    }
    ErrorStats {
        rel_rms: (e2 / s2).sqrt(),
        snr_db: 10.0 * (s2 / e2).log10(),
        max_abs,
    }
}

fn mvm(
    preset: &str,
    rows: usize,
    cols: usize,
    tokens: usize,
    seed: u64,
    kappa: Option<f32>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        rows > 0 && cols > 0 && tokens > 0,
        "--rows, --cols and --tokens must be > 0"
    );
    let p = load(preset)?;
    let data = StreamKey::new(seed, 0, 0, Effect::Data);
    let std_w = 1.0 / (rows as f32).sqrt();
    let mut w = vec![0f32; rows * cols];
    for (c, wr) in w.chunks_mut(rows).enumerate() {
        data.rng(c as u64).fill_normal(wr);
        wr.iter_mut().for_each(|v| *v *= std_w);
    }
    let mut x = vec![0f32; tokens * rows];
    for (t, xr) in x.chunks_mut(rows).enumerate() {
        data.rng((cols + t) as u64).fill_normal(xr);
    }
    let t0 = Instant::now();
    let layer = AnalogLayer::program(&w, cols, rows, &p, seed, "tile-mvm")
        .with_context(|| format!("programming a {cols} x {rows} weight"))?;
    let t_prog = t0.elapsed();
    let ranges: Vec<f32> = layer
        .blocks
        .iter()
        .map(|b| {
            let vals = || x.chunks(rows).flat_map(|r| &r[b.start..b.start + b.len]);
            match kappa {
                Some(k) => {
                    let n = (tokens * b.len) as f32;
                    let mean = vals().sum::<f32>() / n;
                    let var = vals().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
                    (k * var.sqrt()).max(f32::MIN_POSITIVE)
                }
                None => vals()
                    .fold(0f32, |a, v| a.max(v.abs()))
                    .max(f32::MIN_POSITIVE),
            }
        })
        .collect();
    let t1 = Instant::now();
    let y = analog_mvm(&layer, &x, tokens, &ranges, 0)?;
    let t_mvm = t1.elapsed();
    let mut exact = vec![0f32; tokens * cols];
    for (t, er) in exact.chunks_mut(cols).enumerate() {
        let xr = &x[t * rows..(t + 1) * rows];
        for (c, e) in er.iter_mut().enumerate() {
            *e = w[c * rows..(c + 1) * rows]
                .iter()
                .zip(xr)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum::<f64>() as f32;
        }
    }
    let mut ideal = p.clone();
    ideal.device = afm::device::DeviceConfig::Ideal;
    ideal.noise = Default::default();
    let conv_only = AnalogLayer::program(&w, cols, rows, &ideal, seed, "tile-mvm")?;
    let y_conv = analog_mvm(&conv_only, &x, tokens, &ranges, 0)?;
    let full = compare(&y, &exact);
    let conv = compare(&y_conv, &exact);
    println!(
        "preset            {} ({})",
        p.name,
        resolve_preset_path(preset).display()
    );
    println!("weight            {cols} x {rows} (out x in), N(0, 1/{rows}); inputs N(0, 1)");
    println!(
        "tiles             {} ({} row blocks x {} column blocks of {} x {}), utilization {:.1}%",
        layer.map.tiles(),
        layer.map.row_blocks.len(),
        layer.map.col_blocks.len(),
        p.tile.rows,
        p.tile.cols,
        100.0 * layer.map.utilization()
    );
    println!(
        "input ranges      {}",
        ranges
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("tokens            {tokens}, seed {seed}");
    println!(
        "converters only   SNR {:6.2} dB, rel. RMS error {:.4e}, max |err| {:.4e}",
        conv.snr_db, conv.rel_rms, conv.max_abs
    );
    println!(
        "full model        SNR {:6.2} dB, rel. RMS error {:.4e}, max |err| {:.4e}",
        full.snr_db, full.rel_rms, full.max_abs
    );
    println!(
        "time              programming {:.1} ms, MVM {:.1} ms ({:.2} GMAC/s)",
        t_prog.as_secs_f64() * 1e3,
        t_mvm.as_secs_f64() * 1e3,
        (tokens * rows * cols) as f64 / t_mvm.as_secs_f64() / 1e9
    );
    Ok(())
}

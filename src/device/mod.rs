//! Device models: what a crossbar actually stores when asked to store a weight.
//!
//! A weight is stored as conductance. Programming is imprecise (a state-dependent Gaussian
//! error), phase-change devices then drift as g(t) = g(t0) (t/t0)^-nu with a per-device
//! exponent nu, and 1/f noise accumulates over time. A model here takes the target weights of one
//! tile column, normalized to [-1, 1] by the column's maximum, and returns the effective
//! normalized weights at inference time t, drawing from the column's seeded streams.

mod pcm;

pub use pcm::{PcmFamily, PcmModel};

use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Weights of the paper's PCM helper are scaled to |w| <= 180 (unitless), DESIGN §3.2.
pub const AFM_GMAX: f64 = 180.0;

fn one() -> f64 {
    1.0
}
fn afm_gmax() -> f64 {
    AFM_GMAX
}
fn afm_zero_band() -> f64 {
    0.6
}
fn aihwkit_g_max() -> f64 {
    25.0
}
fn aihwkit_t0() -> f64 {
    20.0
}
fn aihwkit_t_read() -> f64 {
    250e-9
}
fn hermes_devices() -> i64 {
    2
}
fn hermes_t_read() -> f64 {
    512e-9
}

/// The `[device]` section of a tile preset: which device model programs the tiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DeviceConfig {
    /// Exact weights: no programming error, no drift.
    Ideal,
    /// Additive Gaussian programming error of std `sigma_rel` times the column's maximum weight.
    Gaussian {
        /// Std of the error relative to the per-channel max |w| (e.g. 0.02).
        sigma_rel: f64,
        /// Multiplies the error (1 = as configured); for sweeps.
        #[serde(default = "one")]
        noise_scale: f64,
    },
    /// The AFM paper's PCM evaluation model (Büchel et al. 2025, DESIGN §3.2): weights scaled to
    /// |w| <= `gmax`, a cubic std polynomial split at 52.5, targets below `zero_band` set to 0.
    PcmAfm {
        /// Scale of the largest weight of a column (paper: 180, unitless).
        #[serde(default = "afm_gmax")]
        gmax: f64,
        /// Targets with |w| below this (in the scaled units) are programmed to exactly 0 (paper: 0.6).
        #[serde(default = "afm_zero_band")]
        zero_band: f64,
        /// Multiplies the programming noise (1 = as published).
        #[serde(default = "one")]
        noise_scale: f64,
    },
    /// aihwkit's `PCMLikeNoiseModel` (Nandakumar et al. 2019) on a differential pair, DESIGN §3.3.
    PcmAihwkit {
        /// Conductance of the largest weight, in uS (aihwkit default 25).
        #[serde(default = "aihwkit_g_max")]
        g_max_us: f64,
        /// First read after programming, in s (aihwkit: 20).
        #[serde(default = "aihwkit_t0")]
        t0_s: f64,
        /// Read duration of the 1/f fit, in s (aihwkit: 250 ns).
        #[serde(default = "aihwkit_t_read")]
        t_read_s: f64,
        /// Multiplies the programming noise.
        #[serde(default = "one")]
        noise_scale: f64,
        /// Multiplies the drift exponents.
        #[serde(default = "one")]
        drift_scale: f64,
        /// Multiplies the accumulated 1/f read noise.
        #[serde(default = "one")]
        read_noise_scale: f64,
    },
    /// aihwkit's `HermesNoiseModel`, fitted on the IBM HERMES chip (Le Gallo et al. 2023).
    Hermes {
        /// Devices per weight polarity: 1, or 2 (multi-device programming, aihwkit default).
        #[serde(default = "hermes_devices")]
        num_devices: i64,
        /// Conductance of the largest weight in uS; default 10.35 (1 device) or 20.7 (2 devices).
        g_max_us: Option<f64>,
        /// First read after programming in s; default 200 (1 device) or 300 (2 devices).
        t0_s: Option<f64>,
        /// Read duration of the 1/f fit, in s (aihwkit: 512 ns).
        #[serde(default = "hermes_t_read")]
        t_read_s: f64,
        /// Multiplies the programming noise.
        #[serde(default = "one")]
        noise_scale: f64,
        /// Multiplies the drift exponents.
        #[serde(default = "one")]
        drift_scale: f64,
        /// Multiplies the accumulated 1/f read noise.
        #[serde(default = "one")]
        read_noise_scale: f64,
    },
}

/// The three streams one tile column draws from.
pub struct ColumnStreams {
    /// Programming noise.
    pub program: Rng,
    /// Drift exponents.
    pub drift: Rng,
    /// Accumulated 1/f noise at the inference time.
    pub read: Rng,
}

/// What realizing one column reports besides the weights.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ColumnReadout {
    /// Sum of |effective weight| right after programming (drift-compensation reference).
    pub sum_abs_t0: f64,
    /// Sum of |effective weight| at the inference time.
    pub sum_abs_t: f64,
}

/// A device model ready to use, built from a validated [`DeviceConfig`].
#[derive(Debug, Clone)]
pub enum Device {
    /// See [`DeviceConfig::Ideal`].
    Ideal,
    /// See [`DeviceConfig::Gaussian`]; `sigma` already includes the noise scale.
    Gaussian {
        /// Error std relative to the column max.
        sigma: f32,
    },
    /// See [`DeviceConfig::PcmAfm`].
    PcmAfm {
        /// Scale of the column max.
        gmax: f64,
        /// Zero band in scaled units.
        zero_band: f64,
        /// Programming-noise multiplier.
        noise_scale: f64,
    },
    /// A phenomenological PCM model on a differential pair (aihwkit's PCM-like and HERMES).
    Pcm(PcmModel),
}

impl DeviceConfig {
    /// The same configuration with every optional value replaced by the default it resolves to.
    pub fn resolved(&self) -> DeviceConfig {
        match self.clone() {
            DeviceConfig::Hermes {
                num_devices,
                g_max_us,
                t0_s,
                t_read_s,
                noise_scale,
                drift_scale,
                read_noise_scale,
            } => {
                let two = num_devices == 2;
                DeviceConfig::Hermes {
                    num_devices,
                    g_max_us: Some(g_max_us.unwrap_or(if two { 20.7 } else { 10.35 })),
                    t0_s: Some(t0_s.unwrap_or(if two { 300.0 } else { 200.0 })),
                    t_read_s,
                    noise_scale,
                    drift_scale,
                    read_noise_scale,
                }
            }
            other => other,
        }
    }

    /// Builds the device model; call after [`DeviceConfig::check`].
    pub fn build(&self) -> Device {
        match self.resolved() {
            DeviceConfig::Ideal => Device::Ideal,
            DeviceConfig::Gaussian {
                sigma_rel,
                noise_scale,
            } => Device::Gaussian {
                sigma: (sigma_rel * noise_scale) as f32,
            },
            DeviceConfig::PcmAfm {
                gmax,
                zero_band,
                noise_scale,
            } => Device::PcmAfm {
                gmax,
                zero_band,
                noise_scale,
            },
            DeviceConfig::PcmAihwkit {
                g_max_us,
                t0_s,
                t_read_s,
                noise_scale,
                drift_scale,
                read_noise_scale,
            } => Device::Pcm(PcmModel {
                family: PcmFamily::Aihwkit,
                g_max_us,
                t0_s,
                t_read_s,
                noise_scale,
                drift_scale,
                read_noise_scale,
            }),
            DeviceConfig::Hermes {
                num_devices,
                g_max_us,
                t0_s,
                t_read_s,
                noise_scale,
                drift_scale,
                read_noise_scale,
            } => Device::Pcm(PcmModel {
                family: if num_devices == 2 {
                    PcmFamily::Hermes2
                } else {
                    PcmFamily::Hermes1
                },
                g_max_us: g_max_us.unwrap_or(20.7),
                t0_s: t0_s.unwrap_or(300.0),
                t_read_s,
                noise_scale,
                drift_scale,
                read_noise_scale,
            }),
        }
    }

    /// Checks every value; returns (dotted field name, message) for the first bad one.
    pub fn check(&self) -> Result<(), (String, String)> {
        fn nonneg(field: &str, v: f64) -> Result<(), (String, String)> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err((
                    format!("device.{field}"),
                    format!("must be a finite number >= 0, got {v}"),
                ))
            }
        }
        fn pos(field: &str, v: f64) -> Result<(), (String, String)> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err((
                    format!("device.{field}"),
                    format!("must be a finite number > 0, got {v}"),
                ))
            }
        }
        match *self {
            DeviceConfig::Ideal => Ok(()),
            DeviceConfig::Gaussian {
                sigma_rel,
                noise_scale,
            } => {
                nonneg("sigma_rel", sigma_rel)?;
                nonneg("noise_scale", noise_scale)
            }
            DeviceConfig::PcmAfm {
                gmax,
                zero_band,
                noise_scale,
            } => {
                pos("gmax", gmax)?;
                nonneg("zero_band", zero_band)?;
                nonneg("noise_scale", noise_scale)
            }
            DeviceConfig::PcmAihwkit {
                g_max_us,
                t0_s,
                t_read_s,
                noise_scale,
                drift_scale,
                read_noise_scale,
            } => {
                pos("g_max_us", g_max_us)?;
                pos("t0_s", t0_s)?;
                pos("t_read_s", t_read_s)?;
                nonneg("noise_scale", noise_scale)?;
                nonneg("drift_scale", drift_scale)?;
                nonneg("read_noise_scale", read_noise_scale)
            }
            DeviceConfig::Hermes {
                num_devices,
                g_max_us,
                t0_s,
                t_read_s,
                noise_scale,
                drift_scale,
                read_noise_scale,
            } => {
                if num_devices != 1 && num_devices != 2 {
                    return Err((
                        "device.num_devices".into(),
                        format!("must be 1 or 2 (HERMES unit cells), got {num_devices}"),
                    ));
                }
                let limit = if num_devices == 2 { 20.7 } else { 10.35 };
                if let Some(g) = g_max_us {
                    if !(g.is_finite() && g > 0.0 && g <= limit) {
                        return Err((
                            "device.g_max_us".into(),
                            format!(
                                "must be in (0, {limit}] uS (the characterized range for \
                                 {num_devices} device(s)), got {g}"
                            ),
                        ));
                    }
                }
                if let Some(t) = t0_s {
                    pos("t0_s", t)?;
                }
                pos("t_read_s", t_read_s)?;
                nonneg("noise_scale", noise_scale)?;
                nonneg("drift_scale", drift_scale)?;
                nonneg("read_noise_scale", read_noise_scale)
            }
        }
    }
}

/// The AFM paper's programming-noise std for a weight of magnitude `w` in [0, 180] units.
pub fn afm_sigma(w: f64) -> f64 {
    if w <= 52.5 {
        2.939751381126213e-05 * w * w * w - 0.00371581208142707 * w * w
            + 0.22419685954327148 * w
            + 2.5797410660159494
    } else {
        1.2329755395573392e-05 * w * w * w - 0.003054993405157235 * w * w
            + 0.2453487119885723 * w
            + 2.110295720240385
    }
}

impl Device {
    /// Whether the model draws any random numbers (an ideal device needs no streams).
    pub fn is_ideal(&self) -> bool {
        matches!(self, Device::Ideal)
    }

    /// Realizes one tile column: `target` holds normalized weights in [-1, 1]; writes the
    /// effective normalized weights at inference time `t_s` (seconds after the first read) into
    /// `out`, and the sum of squared normalized device conductances per weight into `dev_sq`
    /// (used by per-MVM read noise proportional to conductance).
    pub fn realize_column(
        &self,
        target: &[f32],
        t_s: f64,
        streams: &mut ColumnStreams,
        out: &mut [f32],
        dev_sq: &mut [f32],
    ) -> ColumnReadout {
        let mut r = ColumnReadout::default();
        match self {
            Device::Pcm(m) => {
                for ((&u, o), q) in target.iter().zip(out.iter_mut()).zip(dev_sq.iter_mut()) {
                    let (w0, w, sq) = m.realize_weight(f64::from(u), t_s, streams);
                    *o = w as f32;
                    *q = sq as f32;
                    r.sum_abs_t0 += w0.abs();
                    r.sum_abs_t += w.abs();
                }
            }
            _ => {
                for ((&u, o), q) in target.iter().zip(out.iter_mut()).zip(dev_sq.iter_mut()) {
                    let w = self.program_static(u, &mut streams.program);
                    *o = w;
                    *q = w * w;
                    r.sum_abs_t0 += f64::from(w.abs());
                    r.sum_abs_t += f64::from(w.abs());
                }
            }
        }
        r
    }

    /// Expected squared error, in normalized units, of a weight programmed at normalized target
    /// `u` (|u| <= 1): the programming noise's variance plus, in `pcm-afm`'s zero band, the
    /// weight it removes. For the PCM pair models both devices count, the one at zero
    /// conductance with half its variance (it cannot go below zero); drift and 1/f noise are left
    /// out (drift compensation takes the mean drift away).
    /// What [`crate::tile::clip::WeightClip::LeastError`] weighs against clipping.
    pub fn expected_sq_error(&self, u: f64) -> f64 {
        match self {
            Device::Ideal => 0.0,
            Device::Gaussian { sigma } => f64::from(*sigma) * f64::from(*sigma),
            Device::PcmAfm {
                gmax,
                zero_band,
                noise_scale,
            } => {
                let w = u.abs() * gmax;
                if w < *zero_band {
                    u * u
                } else {
                    (noise_scale * afm_sigma(w) / gmax).powi(2)
                }
            }
            Device::Pcm(m) => {
                let g = m.g_max_us;
                let on = m.noise_scale * m.prog_sigma(u.abs() * g) / g;
                let off = m.noise_scale * m.prog_sigma(0.0) / g;
                on * on + off * off / 2.0
            }
        }
    }

    /// Programming of the drift-free models (ideal, gaussian, pcm-afm).
    fn program_static(&self, u: f32, rng: &mut Rng) -> f32 {
        match *self {
            Device::Ideal | Device::Pcm(_) => u,
            Device::Gaussian { sigma } => u + sigma * rng.normal(),
            Device::PcmAfm {
                gmax,
                zero_band,
                noise_scale,
            } => {
                let w = f64::from(u) * gmax;
                // Draw even for zeroed weights so a weight's noise does not depend on its neighbours.
                let n = f64::from(rng.normal());
                if w.abs() < zero_band {
                    0.0
                } else {
                    ((w + noise_scale * afm_sigma(w.abs()) * n) / gmax) as f32
                }
            }
        }
    }
}

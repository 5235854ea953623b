//! Phenomenological PCM models on a differential pair, as fitted in aihwkit.
//!
//! A weight u in [-1, 1] becomes G+ = max(u, 0) g_max and G- = max(-u, 0) g_max. Each device is
//! programmed with a Gaussian error whose std is a polynomial in g/g_max, gets a drift exponent
//! nu ~ |N(mu(g), sd(g))|, drifts as (t/t0)^-nu and picks up accumulated 1/f noise of relative
//! std Q(g) sqrt(ln((t + t_read) / (2 t_read))). Constants: aihwkit
//! `inference/noise/pcm.py` (PCMLikeNoiseModel, Nandakumar et al. ICECS 2019) and
//! `inference/noise/hermes.py` (HermesNoiseModel, Le Gallo et al. Nat. Electron. 2023).

use super::ColumnStreams;

/// aihwkit clips relative conductances to this before taking a logarithm.
const ZERO_CLIP: f64 = 1e-7;

/// Which published fit the model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcmFamily {
    /// aihwkit's PCMLikeNoiseModel (fitted at g_max = 25 uS).
    Aihwkit,
    /// aihwkit's HermesNoiseModel with one device per polarity (fitted at 10.35 uS).
    Hermes1,
    /// aihwkit's HermesNoiseModel with two devices per polarity (fitted at 20.7 uS).
    Hermes2,
}

/// A PCM model with its parameters resolved.
#[derive(Debug, Clone)]
pub struct PcmModel {
    /// Which fit.
    pub family: PcmFamily,
    /// Conductance of the largest weight, uS.
    pub g_max_us: f64,
    /// First read after programming, s.
    pub t0_s: f64,
    /// Read duration of the 1/f fit, s.
    pub t_read_s: f64,
    /// Programming-noise multiplier.
    pub noise_scale: f64,
    /// Drift-exponent multiplier.
    pub drift_scale: f64,
    /// 1/f-noise multiplier.
    pub read_noise_scale: f64,
}

impl PcmModel {
    /// Programming-noise coefficients in powers of g/g_max, and the g_max they were fitted at.
    fn prog_coeffs(&self) -> (&'static [f64], f64) {
        match self.family {
            PcmFamily::Aihwkit => (&[0.26348, 1.9650, -1.1731], 25.0),
            PcmFamily::Hermes1 => (&[0.15781817, 2.32443916, -2.16310839, 0.68841818], 10.35),
            PcmFamily::Hermes2 => (&[0.16603222, 4.71806468, -8.48101252, 4.68961419], 20.7),
        }
    }

    /// Std of the programming error (uS) of a device with target conductance `g` (uS).
    pub fn prog_sigma(&self, g: f64) -> f64 {
        let (c, g_ref) = self.prog_coeffs();
        let x = g / self.g_max_us;
        let mut p = 1.0;
        let mut s = c[0];
        for &k in &c[1..] {
            p *= x;
            s += p * k;
        }
        s * self.g_max_us / g_ref
    }

    /// Mean and std of the drift exponent for a device of target conductance `g` (uS).
    pub fn nu_params(&self, g: f64) -> (f64, f64) {
        let x = (g / self.g_max_us).abs().max(ZERO_CLIP);
        match self.family {
            PcmFamily::Aihwkit => (
                (-0.0155 * x.ln() + 0.0244).clamp(0.049, 0.1),
                (-0.0125 * x.ln() - 0.0059).clamp(0.008, 0.045),
            ),
            PcmFamily::Hermes1 | PcmFamily::Hermes2 => {
                let mu = if x < 0.0945 {
                    (-0.0387 * x.ln() - 0.0182).clamp(0.0720, 0.13)
                } else {
                    -0.0436 * x * x - 0.0126 * x + 0.0736
                };
                let sd = if self.family == PcmFamily::Hermes1 {
                    if x < 0.3039 {
                        (-0.0120 * x.ln() - 0.0023).clamp(0.0124, 0.04)
                    } else {
                        -0.0165 * x * x + 0.0116 * x + 0.0104
                    }
                } else if x < 0.3055 {
                    (-0.0117 * x.ln() - 0.0057).clamp(0.0091, 0.04)
                } else {
                    -0.0118 * x * x + 0.0093 * x + 0.0073
                };
                (mu, sd)
            }
        }
    }

    /// The 1/f noise coefficient Q of a device with programmed conductance `g` (uS).
    pub fn q(&self, g: f64) -> f64 {
        let x = g.abs() / self.g_max_us;
        match self.family {
            PcmFamily::Aihwkit => (0.0088 / x.powf(0.65).max(1e-3)).min(0.2),
            PcmFamily::Hermes1 => {
                if x < 0.1591 {
                    (-0.0078 * x.ln() + 0.0038).clamp(0.0179, 0.04)
                } else {
                    0.0664 * x * x * x - 0.1352 * x * x + 0.0768 * x + 0.0088
                }
            }
            PcmFamily::Hermes2 => {
                if x < 0.16 {
                    (-0.0117 * x.ln() - 0.0069).clamp(0.015, 0.04)
                } else {
                    0.0069 * x * x * x - 0.0280 * x * x + 0.0211 * x + 0.0123
                }
            }
        }
    }

    /// Programmed conductance (uS) of a device with target `g_target` (uS); `n` ~ N(0, 1).
    pub fn program(&self, g_target: f64, n: f64) -> f64 {
        (g_target + self.noise_scale * self.prog_sigma(g_target) * n).max(0.0)
    }

    /// Drift exponent of a device with target `g_target` (uS); `n` ~ N(0, 1).
    pub fn nu(&self, g_target: f64, n: f64) -> f64 {
        let (mu, sd) = self.nu_params(g_target);
        (mu + sd * n).abs() * self.drift_scale
    }

    /// Conductance at `t_s` seconds after the first read of a device programmed to `g_prog`
    /// with drift exponent `nu`: drift, then accumulated 1/f noise (`n` ~ N(0, 1)).
    pub fn at_time(&self, g_prog: f64, nu: f64, t_s: f64, n: f64) -> f64 {
        let t = t_s + self.t0_s;
        let g_drift = if t > self.t0_s {
            g_prog * (t / self.t0_s).powf(-nu)
        } else {
            g_prog
        };
        let sig = self.q(g_prog) * ((t + self.t_read_s) / (2.0 * self.t_read_s)).ln().sqrt();
        (g_drift + g_drift.abs() * self.read_noise_scale * sig * n).max(0.0)
    }

    /// One device: programmed conductance and its conductance at inference time `t_s`.
    pub fn device(&self, g_target: f64, t_s: f64, s: &mut ColumnStreams) -> (f64, f64) {
        let g_prog = self.program(g_target, s.program.normal_f64());
        let nu = self.nu(g_target, s.drift.normal_f64());
        (g_prog, self.at_time(g_prog, nu, t_s, s.read.normal_f64()))
    }

    /// One weight on a differential pair: (normalized weight after programming, at time t,
    /// sum of squared normalized conductances of its two devices at time t).
    pub fn realize_weight(&self, u: f64, t_s: f64, s: &mut ColumnStreams) -> (f64, f64, f64) {
        let (gp0, gpt) = self.device(u.max(0.0) * self.g_max_us, t_s, s);
        let (gm0, gmt) = self.device((-u).max(0.0) * self.g_max_us, t_s, s);
        let gm = self.g_max_us;
        (
            (gp0 - gm0) / gm,
            (gpt - gmt) / gm,
            (gpt * gpt + gmt * gmt) / (gm * gm),
        )
    }
}

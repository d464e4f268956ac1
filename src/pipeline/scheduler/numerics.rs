//! The few numpy and torch primitives whose rounding decides diffusers' schedules, reproduced bit for
//! bit: a timestep that lands one ulp off rounds to a different integer, and the 1e-5 agreement with
//! diffusers depends on the float32 tables being identical.

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU: float32, the first half
/// filled forward from `start` and the second half backward from `end`. Torch's x86 kernels are
/// built with FMA contraction, so each value is a single fused multiply-add.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|index| {
            if index < halfway {
                step.mul_add(index as f32, start)
            } else {
                (-step).mul_add((steps - index - 1) as f32, end)
            }
        })
        .collect()
}

/// `torch.cumprod` of a float32 tensor on CPU, which accumulates in float64.
pub(crate) fn cumprod_f32(values: &[f32]) -> Vec<f32> {
    let mut product = 1.0f64;
    values
        .iter()
        .map(|&value| {
            product *= f64::from(value);
            product as f32
        })
        .collect()
}

/// `np.linspace(start, stop, num)` in float64: `i * step + start`, with the last value set to `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let mut values = linspace_steps(start, stop, num, num.saturating_sub(1));
    if num > 1 {
        values[num - 1] = stop;
    }
    values
}

/// `np.linspace(start, stop, num, endpoint=False)` in float64: `num` values `i * step + start` with
/// `step = (stop - start) / num`, stopping short of `stop`.
pub(crate) fn np_linspace_without_endpoint(start: f64, stop: f64, num: usize) -> Vec<f64> {
    linspace_steps(start, stop, num, num)
}

/// numpy's linspace before it sets the endpoint: `num` values `i * (stop - start) / divisions + start`, or
/// `start` repeated when there is nothing to divide.
fn linspace_steps(start: f64, stop: f64, num: usize, divisions: usize) -> Vec<f64> {
    if divisions == 0 {
        return vec![start; num];
    }
    let step = (stop - start) / divisions as f64;
    (0..num).map(|index| index as f64 * step + start).collect()
}

/// `np.arange(start, stop, step)` in float64: numpy sizes it as `ceil((stop - start) / step)` and
/// fills `start + i * delta`, where `delta` is `(start + step) - start` rather than `step`.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let length = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..length).map(|index| start + index as f64 * delta).collect()
}

/// `np.interp(x, np.arange(len(table)), table)`: linear interpolation in float64 over a table
/// sampled at 0, 1, 2, …, clamped to the end values outside it.
pub(crate) fn np_interp(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return f64::from(table[0]);
    }
    if x >= last as f64 {
        return f64::from(table[last]);
    }
    let low = x.floor() as usize;
    let (low_value, high_value) = (f64::from(table[low]), f64::from(table[low + 1]));
    if x == low as f64 {
        return low_value;
    }
    let slope = high_value - low_value;
    slope * (x - low as f64) + low_value
}

/// The fractional training timestep of each of `sigmas`, for schedules spaced by sigma.
pub(crate) fn timesteps_for_sigmas(sigmas: &[f64], training_sigmas: &[f32]) -> Vec<f64> {
    let log_sigmas: Vec<f32> = training_sigmas.iter().map(|sigma| sigma.ln()).collect();
    sigmas.iter().map(|&sigma| sigma_to_t(sigma, &log_sigmas)).collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose sigma is `sigma`, interpolating
/// linearly in log-sigma between the two neighbouring training sigmas. `log_sigmas` is the float32
/// table `np.log(sigmas)`, ascending with the timestep.
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let at_or_below = log_sigmas
        .iter()
        .take_while(|&&value| log_sigma - f64::from(value) >= 0.0)
        .count();
    let low_index = at_or_below.saturating_sub(1).min(log_sigmas.len() - 2);
    let (low, high) = (log_sigmas[low_index], log_sigmas[low_index + 1]);
    // numpy subtracts the two float32 neighbours in float32, the rest in float64.
    let weight = ((f64::from(low) - log_sigma) / f64::from(low - high)).clamp(0.0, 1.0);
    (1.0 - weight) * low_index as f64 + weight * (low_index + 1) as f64
}

/// Euler's and DPM-Solver's alternatives to interpolating the training sigmas at the timesteps:
/// sigmas spaced by formula, with timesteps then derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigmaSpacing {
    /// `use_karras_sigmas`.
    Karras,
    /// `use_exponential_sigmas`.
    Exponential,
}

impl SigmaSpacing {
    /// `steps` sigmas from `sigma_max` down to `sigma_min`, in float64.
    pub(crate) fn sigmas(self, sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
        match self {
            SigmaSpacing::Karras => karras_sigmas(sigma_min, sigma_max, steps),
            SigmaSpacing::Exponential => exponential_sigmas(sigma_min, sigma_max, steps),
        }
    }
}

/// Karras et al. (2022) sigmas: evenly spaced in `sigma^(1/7)` from `sigma_max` down to `sigma_min`.
fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / RHO);
    let max_inv_rho = sigma_max.powf(1.0 / RHO);
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// Sigmas evenly spaced in log space from `sigma_max` down to `sigma_min`.
fn exponential_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), steps)
        .into_iter()
        .map(f64::exp)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_keeps_numpys_length_quirk() {
        // 1000 / (1000 / 61) is just above 61, so numpy yields 62 values.
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 50.0).len(), 50);
    }

    #[test]
    fn linspace_with_and_without_endpoint() {
        assert_eq!(np_linspace(0.0, 1.0, 3), [0.0, 0.5, 1.0]);
        assert_eq!(np_linspace(2.0, 5.0, 1), [2.0]);
        assert_eq!(np_linspace_without_endpoint(0.0, 50.0, 4), [0.0, 12.5, 25.0, 37.5]);
        assert_eq!(np_linspace_without_endpoint(2.0, 5.0, 1), [2.0]);
    }

    #[test]
    fn interp_clamps_and_hits_table_points() {
        let table = [1.0, 2.0, 4.0];
        assert_eq!(np_interp(-1.0, &table), 1.0);
        assert_eq!(np_interp(1.0, &table), 2.0);
        assert_eq!(np_interp(1.5, &table), 3.0);
        assert_eq!(np_interp(9.0, &table), 4.0);
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let log_sigmas: Vec<f32> = [0.1f32, 0.2, 0.4, 0.8].iter().map(|sigma| sigma.ln()).collect();
        assert!((sigma_to_t(0.2, &log_sigmas) - 1.0).abs() < 1e-6);
        assert_eq!(sigma_to_t(0.01, &log_sigmas), 0.0);
        assert_eq!(sigma_to_t(5.0, &log_sigmas), 3.0);
    }
}

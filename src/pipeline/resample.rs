//! Pillow's `Image.resize` for 8-bit RGB images, bit for bit (libImaging/Resample.c): the same filter kernels,
//! support scaled when shrinking (antialiasing), coefficients rounded to 22-bit fixed point, a horizontal pass
//! then a vertical one, each rounded and clipped to 8 bits. Reward models' preprocessing (transformers' CLIP
//! image processor) and img2img's starting image (diffusers' image processor) both resize with Pillow.

use image::RgbImage;

/// PIL's resampling filters, which `transformers`' image processors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeFilter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl ResizeFilter {
    pub const NAMES: &'static str = "box, bilinear, hamming, bicubic, lanczos";

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "box" => Some(ResizeFilter::Box),
            "bilinear" => Some(ResizeFilter::Bilinear),
            "hamming" => Some(ResizeFilter::Hamming),
            "bicubic" => Some(ResizeFilter::Bicubic),
            "lanczos" => Some(ResizeFilter::Lanczos),
            _ => None,
        }
    }
}

/// Bits of the fixed-point coefficients: 32 − 8 (pixel) − 2 (headroom for negative lobes and sums above 1).
const PRECISION_BITS: u32 = 22;

fn kernel(filter: ResizeFilter) -> (fn(f64) -> f64, f64) {
    fn box_filter(x: f64) -> f64 {
        if x > -0.5 && x <= 0.5 {
            1.0
        } else {
            0.0
        }
    }
    fn bilinear(x: f64) -> f64 {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    }
    fn hamming(x: f64) -> f64 {
        let x = x.abs();
        if x == 0.0 {
            1.0
        } else if x >= 1.0 {
            0.0
        } else {
            let x = x * std::f64::consts::PI;
            // Pillow writes the window's constants as C floats.
            x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
        }
    }
    fn bicubic(x: f64) -> f64 {
        // Keys' cubic convolution with a = -0.5.
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    }
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    fn lanczos(x: f64) -> f64 {
        if (-3.0..3.0).contains(&x) {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    }
    match filter {
        ResizeFilter::Box => (box_filter, 0.5),
        ResizeFilter::Bilinear => (bilinear, 1.0),
        ResizeFilter::Hamming => (hamming, 1.0),
        ResizeFilter::Bicubic => (bicubic, 2.0),
        ResizeFilter::Lanczos => (lanczos, 3.0),
    }
}

/// For each output position: the first input index and its fixed-point weights.
struct Coefficients {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn coefficients(in_size: usize, out_size: usize, filter: ResizeFilter) -> Coefficients {
    let (function, base_support) = kernel(filter);
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = base_support * filter_scale;
    let inverse = 1.0 / filter_scale;
    let mut starts = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for out in 0..out_size {
        let center = (out as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero; both bounds are then clamped to the image.
        let min = ((center - support + 0.5) as i64).max(0) as usize;
        let max = ((center + support + 0.5) as i64).min(in_size as i64).max(min as i64) as usize;
        let mut row: Vec<f64> = (min..max)
            .map(|index| function((index as f64 - center + 0.5) * inverse))
            .collect();
        let total: f64 = row.iter().sum();
        if total != 0.0 {
            row.iter_mut().for_each(|weight| *weight /= total);
        }
        let fixed = row
            .iter()
            .map(|&weight| {
                let scaled = weight * f64::from(1u32 << PRECISION_BITS);
                (if weight < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
            })
            .collect();
        starts.push(min);
        weights.push(fixed);
    }
    Coefficients { starts, weights }
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass over `[rows, columns, 3]` bytes along the columns axis (`along_rows == false`) or the rows axis.
fn resample_pass(
    input: &[u8],
    in_rows: usize,
    in_columns: usize,
    coefficients: &Coefficients,
    along_rows: bool,
) -> (Vec<u8>, usize, usize) {
    let (out_rows, out_columns) = if along_rows {
        (coefficients.starts.len(), in_columns)
    } else {
        (in_rows, coefficients.starts.len())
    };
    let mut output = vec![0u8; out_rows * out_columns * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    for row in 0..out_rows {
        for column in 0..out_columns {
            let (position, fixed_index) = if along_rows { (row, column) } else { (column, row) };
            let start = coefficients.starts[position];
            let mut sums = [half; 3];
            for (offset, &weight) in coefficients.weights[position].iter().enumerate() {
                let (source_row, source_column) = if along_rows {
                    (start + offset, fixed_index)
                } else {
                    (fixed_index, start + offset)
                };
                let base = (source_row * in_columns + source_column) * 3;
                for channel in 0..3 {
                    sums[channel] = sums[channel].wrapping_add(i32::from(input[base + channel]).wrapping_mul(weight));
                }
            }
            let base = (row * out_columns + column) * 3;
            for channel in 0..3 {
                output[base + channel] = clip8(sums[channel]);
            }
        }
    }
    (output, out_rows, out_columns)
}

/// Pillow's `Image.resize((width, height), filter)` on an RGB image.
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: ResizeFilter) -> RgbImage {
    let (in_width, in_height) = (image.width() as usize, image.height() as usize);
    let mut pixels = image.as_raw().clone();
    let (mut rows, mut columns) = (in_height, in_width);
    if width != in_width {
        (pixels, rows, columns) = resample_pass(&pixels, rows, columns, &coefficients(in_width, width, filter), false);
    }
    if height != in_height {
        (pixels, rows, columns) = resample_pass(&pixels, rows, columns, &coefficients(in_height, height, filter), true);
    }
    // The buffer has exactly rows * columns * 3 bytes by construction.
    RgbImage::from_raw(columns as u32, rows as u32, pixels)
        .unwrap_or_else(|| RgbImage::new(columns as u32, rows as u32))
}

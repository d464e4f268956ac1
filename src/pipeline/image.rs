//! Turning the VAE's output into PNG bytes.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use crate::error::{Error, Result};

/// Converts one CHW image in [-1, 1] to interleaved RGB bytes, as diffusers' `VaeImageProcessor` does:
/// `(x / 2 + 0.5).clamp(0, 1)`, then `round(x * 255)`.
pub fn to_rgb8(chw: &[f32], height: usize, width: usize) -> Vec<u8> {
    let plane = height * width;
    let mut rgb = vec![0u8; plane * 3];
    for (pixel, out) in rgb.chunks_exact_mut(3).enumerate() {
        for (channel, value) in out.iter_mut().enumerate() {
            let x = (chw[channel * plane + pixel] / 2.0 + 0.5).clamp(0.0, 1.0);
            *value = (x * 255.0).round() as u8;
        }
    }
    rgb
}

/// Encodes RGB bytes as PNG. The encoder settings are fixed, so the same pixels always give the same bytes.
pub fn encode_png(rgb: &[u8], height: usize, width: usize) -> Result<Vec<u8>> {
    let mut png = Vec::with_capacity(rgb.len() / 2 + 128);
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
        .write_image(rgb, width as u32, height as u32, ExtendedColorType::Rgb8)
        .map_err(|err| Error::Internal(format!("PNG encoding failed: {err}")))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_vae_range_to_bytes() {
        // One pixel per channel plane: R=-1, G=0, B=1, and out-of-range values clamp.
        assert_eq!(to_rgb8(&[-1.0, 0.0, 1.0], 1, 1), vec![0, 128, 255]);
        assert_eq!(to_rgb8(&[-3.0, 0.002, 7.0], 1, 1), vec![0, 128, 255]);
    }

    #[test]
    fn png_round_trips() {
        let rgb: Vec<u8> = (0..4 * 4 * 3).map(|i| (i * 5) as u8).collect();
        let png = encode_png(&rgb, 4, 4).unwrap();
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded.into_raw(), rgb);
    }
}

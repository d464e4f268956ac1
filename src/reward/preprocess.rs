//! Image preprocessing for reward models, exactly as the manifest says and as `transformers`' CLIP image
//! processor does it in Python: decode to RGB, resize the shortest edge with PIL's resampling, centre-crop,
//! rescale and normalise, then lay out as `[3, H, W]` float32.
//!
//! The resize reproduces Pillow's `Image.resize` for 8-bit images bit for bit: the same filter kernels, support
//! scaled when shrinking (antialiasing), coefficients rounded to 22-bit fixed point, a horizontal pass then a
//! vertical one, each rounded and clipped to 8 bits. Any other bicubic would move scores by more than the 1e-4
//! that the parity test allows.
//!
//! Decoding checks the header first: an image that announces more pixels than the limit is refused before any
//! pixel buffer is allocated, so a small compressed file cannot expand into gigabytes (a decompression bomb).

use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbImage};

use crate::error::{Error, Result};
use crate::pipeline::resample::resize;
use crate::reward::manifest::ImageSpec;

/// Decodes a PNG or JPEG to 8-bit RGB (alpha dropped, grey expanded), refusing more than `max_pixels`.
/// `field` names the image in errors, e.g. `images[2]`.
pub fn decode_image(bytes: &[u8], max_pixels: u64, field: &str) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| Error::validation(field, format!("`{field}` cannot be read: {err}")))?;
    match reader.format() {
        Some(ImageFormat::Png) | Some(ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(Error::validation(
                field,
                format!("`{field}` is {other:?}; send PNG or JPEG"),
            ))
        }
        None => {
            return Err(Error::validation(
                field,
                format!("`{field}` is not a PNG or JPEG image (its first bytes match neither)"),
            ))
        }
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|err| Error::validation(field, format!("`{field}` has an unreadable header: {err}")))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(Error::validation(
            field,
            format!("`{field}` is {width}x{height} = {pixels} pixels; the limit is {max_pixels} (--max-image-pixels)"),
        ));
    }
    if pixels == 0 {
        return Err(Error::validation(
            field,
            format!("`{field}` has no pixels ({width}x{height})"),
        ));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| Error::validation(field, format!("`{field}` cannot be read: {err}")))?;
    // Belt and braces: the decoder itself refuses to allocate past the announced size.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|err| Error::validation(field, format!("`{field}` does not decode: {err}")))?;
    Ok(decoded.to_rgb8())
}

/// Turns RGB images into the reward model's `pixel_values`.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: ImageSpec,
}

impl Preprocessor {
    pub fn new(spec: ImageSpec) -> Self {
        Preprocessor { spec }
    }

    /// `(height, width)` of the tensor each image becomes.
    pub fn output_size(&self) -> (usize, usize) {
        (self.spec.crop_height, self.spec.crop_width)
    }

    /// Values per image: 3 · height · width.
    pub fn values_per_image(&self) -> usize {
        3 * self.spec.crop_height * self.spec.crop_width
    }

    /// Appends one image's `[3, H, W]` values to `out`.
    pub fn pixel_values_into(&self, image: &RgbImage, out: &mut Vec<f32>) {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let (new_width, new_height) = shortest_edge_size(width, height, self.spec.shortest_edge);
        let resized;
        let source = if (new_width, new_height) == (width, height) {
            image
        } else {
            resized = resize(image, new_width, new_height, self.spec.filter);
            &resized
        };
        let (crop_height, crop_width) = self.output_size();
        // The top-left corner at floor((size - crop) / 2) as transformers' center_crop puts it, or rounded half
        // to even as torchvision's CenterCrop does.
        let top = self.spec.crop_offset.of(new_height - crop_height);
        let left = self.spec.crop_offset.of(new_width - crop_width);
        let start = out.len();
        out.resize(start + self.values_per_image(), 0.0);
        let planes = &mut out[start..];
        let plane = crop_height * crop_width;
        for y in 0..crop_height {
            for x in 0..crop_width {
                let pixel = source.get_pixel((left + x) as u32, (top + y) as u32).0;
                for channel in 0..3 {
                    let value = f32::from(pixel[channel]) * self.spec.rescale;
                    planes[channel * plane + y * crop_width + x] =
                        (value - self.spec.mean[channel]) / self.spec.std[channel];
                }
            }
        }
    }

    pub fn pixel_values(&self, image: &RgbImage) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.values_per_image());
        self.pixel_values_into(image, &mut out);
        out
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side becomes `edge`, the
/// long side `int(edge * long / short)`. Returns `(width, height)`.
pub fn shortest_edge_size(width: usize, height: usize, edge: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (edge as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (edge, new_long)
    } else {
        (new_long, edge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::resample::ResizeFilter;
    use crate::reward::manifest::CropOffset;

    fn spec(edge: usize, crop: usize) -> ImageSpec {
        ImageSpec {
            shortest_edge: edge,
            filter: ResizeFilter::Bicubic,
            crop_height: crop,
            crop_width: crop,
            crop_offset: CropOffset::Floor,
            rescale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    fn png_of(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 9]));
        let mut bytes = Vec::new();
        image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).unwrap();
        bytes
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn the_short_side_becomes_the_edge_and_the_long_side_is_floored() {
        assert_eq!(shortest_edge_size(640, 480, 224), (298, 224));
        assert_eq!(shortest_edge_size(480, 640, 224), (224, 298));
        assert_eq!(shortest_edge_size(64, 64, 64), (64, 64));
    }

    #[test]
    fn same_size_is_a_copy_and_flat_images_stay_flat() {
        let flat = RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 77]));
        let resized = resize(&flat, 17, 53, ResizeFilter::Bicubic);
        assert_eq!((resized.width(), resized.height()), (17, 53));
        assert!(resized.pixels().all(|pixel| pixel.0 == [200, 10, 77]));
        let preprocessor = Preprocessor::new(spec(30, 30));
        let values = preprocessor.pixel_values(&flat);
        assert_eq!(values.len(), 3 * 30 * 30);
        assert!((values[0] - 200.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn centre_crop_takes_the_middle() {
        // 4 columns, 2 rows: after no resize (edge 2), a 2x2 crop starts at column 1.
        let image = RgbImage::from_fn(4, 2, |x, _| image::Rgb([x as u8 * 10, 0, 0]));
        let preprocessor = Preprocessor::new(ImageSpec {
            rescale: 1.0,
            ..spec(2, 2)
        });
        let values = preprocessor.pixel_values(&image);
        assert_eq!(&values[..4], &[10.0, 20.0, 10.0, 20.0]);
    }

    #[test]
    fn torchvision_rounds_the_crop_offset_half_to_even() {
        // Python's round(d / 2) against floor, for margins 0 to 8.
        let floor: Vec<usize> = (0..9).map(|margin| CropOffset::Floor.of(margin)).collect();
        let even: Vec<usize> = (0..9).map(|margin| CropOffset::RoundHalfEven.of(margin)).collect();
        assert_eq!(floor, [0, 0, 1, 1, 2, 2, 3, 3, 4]);
        assert_eq!(even, [0, 0, 1, 2, 2, 2, 3, 4, 4]);
        // 7 columns, a 4-wide crop: torchvision starts at column 2, transformers at 1.
        let image = RgbImage::from_fn(7, 4, |x, _| image::Rgb([x as u8, 0, 0]));
        let crop = |crop_offset| {
            Preprocessor::new(ImageSpec {
                rescale: 1.0,
                crop_offset,
                ..spec(4, 4)
            })
            .pixel_values(&image)[0]
        };
        assert_eq!((crop(CropOffset::Floor), crop(CropOffset::RoundHalfEven)), (1.0, 2.0));
    }

    #[test]
    fn decoding_refuses_bombs_and_non_images_before_allocating() {
        let png = png_of(100, 100);
        assert!(decode_image(&png, 10_000, "images[0]").is_ok());
        let err = decode_image(&png, 9_999, "images[0]").unwrap_err();
        assert_eq!(err.param(), Some("images[0]"));
        assert!(
            err.to_string().contains("100x100 = 10000 pixels; the limit is 9999"),
            "{err}"
        );
        let err = decode_image(b"hello", 1 << 20, "images[1]").unwrap_err();
        assert!(err.to_string().contains("not a PNG or JPEG"), "{err}");
        let mut truncated = png.clone();
        truncated.truncate(60);
        let err = decode_image(&truncated, 1 << 20, "images[2]").unwrap_err();
        assert_eq!(err.param(), Some("images[2]"));
    }

    #[test]
    fn a_header_that_lies_about_its_size_is_refused() {
        // A PNG whose IHDR claims 100000 x 100000 pixels: refused from the header alone.
        let mut png = png_of(8, 8);
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // The chunk's CRC covers its type and data (bytes 12..29), so the header still reads as valid.
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_image(&png, 1 << 24, "images[0]").unwrap_err();
        assert!(err.to_string().contains("100000x100000"), "{err}");
    }
}

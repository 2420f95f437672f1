//! Image encoding with the generation metadata that Civitai and A1111 read back:
//! a PNG `parameters` text chunk, or an EXIF `UserComment` (JPEG, WebP) holding the same
//! A1111 "infotext".

pub mod infotext;
pub mod input;

use std::io::Cursor;

use image::{ImageEncoder, RgbImage};

/// Image file formats a job can ask for. Serialised as its request name (`png`, `jpeg`,
/// `webp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    /// The names error messages list (`jpg` is accepted too, as a spelling of `jpeg`).
    pub const ALLOWED: &'static str = "png, jpeg, webp";

    /// The format called `name` (`png`, `jpeg`/`jpg`, `webp`; case and surrounding white
    /// space do not count).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }

    /// File name extension (object storage keys).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    /// MIME type (data URIs, uploads).
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

/// Failures while encoding an image.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
    #[error("{format} encoding failed: {source}")]
    Image {
        format: &'static str,
        #[source]
        source: image::ImageError,
    },
}

/// Encodes `img` as `format` with `parameters` (an A1111 infotext) embedded.
/// `quality` (1–100) applies to JPEG; the WebP encoder is lossless.
pub fn encode(
    img: &RgbImage,
    format: OutputFormat,
    quality: u8,
    parameters: &str,
) -> Result<Vec<u8>, EncodeError> {
    match format {
        OutputFormat::Png => encode_png(img, parameters),
        OutputFormat::Jpeg => {
            let mut out = Vec::new();
            let enc =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
            write_with_exif(enc, img, parameters, "JPEG")?;
            Ok(out)
        }
        OutputFormat::Webp => {
            let mut out = Vec::new();
            let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            write_with_exif(enc, img, parameters, "WebP")?;
            Ok(out)
        }
    }
}

/// Writes `img` with `parameters` in its EXIF `UserComment` (JPEG and WebP).
fn write_with_exif(
    mut enc: impl ImageEncoder,
    img: &RgbImage,
    parameters: &str,
    format: &'static str,
) -> Result<(), EncodeError> {
    set_exif(&mut enc, parameters);
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|source| EncodeError::Image { format, source })
}

fn set_exif(enc: &mut impl ImageEncoder, parameters: &str) {
    // Both encoders accept EXIF; an encoder that did not would only lose the metadata.
    if enc
        .set_exif_metadata(exif_with_user_comment(parameters))
        .is_err()
    {
        tracing::warn!("image encoder does not take EXIF; metadata not embedded");
    }
}

/// PNG with an uncompressed `parameters` chunk: `tEXt` when the text is Latin-1, else `iTXt`
/// (what Pillow writes for A1111; Civitai's reader does not inflate compressed text chunks).
fn encode_png(img: &RgbImage, parameters: &str) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(Cursor::new(&mut out), img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        if parameters.chars().all(|c| (c as u32) < 256) {
            enc.add_text_chunk("parameters".into(), parameters.into())?;
        } else {
            enc.add_itxt_chunk("parameters".into(), parameters.into())?;
        }
        let mut writer = enc.write_header()?;
        writer.write_image_data(img.as_raw())?;
        writer.finish()?;
    }
    Ok(out)
}

/// A minimal big-endian TIFF/EXIF block: IFD0 → Exif IFD → `UserComment` (0x9286) holding
/// `"UNICODE\0"` + UTF-16BE text, which is what A1111 writes (piexif) and Civitai decodes.
pub fn exif_with_user_comment(text: &str) -> Vec<u8> {
    let mut comment = b"UNICODE\0".to_vec();
    for unit in text.encode_utf16() {
        comment.extend_from_slice(&unit.to_be_bytes());
    }
    let mut b = Vec::with_capacity(64 + comment.len());
    b.extend_from_slice(b"MM\0\x2a");
    b.extend_from_slice(&8u32.to_be_bytes()); // IFD0 offset
                                              // IFD0 at 8: one entry (ExifIFDPointer), then next-IFD = 0.
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&0x8769u16.to_be_bytes());
    b.extend_from_slice(&4u16.to_be_bytes()); // LONG
    b.extend_from_slice(&1u32.to_be_bytes());
    let exif_ifd = 8 + 2 + 12 + 4;
    b.extend_from_slice(&(exif_ifd as u32).to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    // Exif IFD at 26: one entry (UserComment, UNDEFINED), then next-IFD = 0, then the data.
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&0x9286u16.to_be_bytes());
    b.extend_from_slice(&7u16.to_be_bytes()); // UNDEFINED
    b.extend_from_slice(&(comment.len() as u32).to_be_bytes());
    let data = exif_ifd + 2 + 12 + 4;
    b.extend_from_slice(&(data as u32).to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&comment);
    b
}

/// Base64 data URI of encoded image bytes, as RunPod's SDXL worker returns them.
pub fn data_uri(bytes: &[u8], format: OutputFormat) -> String {
    use base64::Engine;
    format!(
        "data:{};base64,{}",
        format.mime(),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RgbImage {
        RgbImage::from_fn(16, 8, |x, y| image::Rgb([x as u8 * 16, y as u8 * 32, 200]))
    }

    const TEXT: &str =
        "a cat, (masterpiece:1.2)\nNegative prompt: blurry\nSteps: 8, Sampler: Euler, Seed: 1";

    /// Reads EXIF UserComment back through an independent EXIF parser and decodes it the way
    /// Civitai does (`UNICODE\0` + UTF-16BE).
    fn user_comment(bytes: &[u8]) -> String {
        let exif = exif::Reader::new()
            .read_from_container(&mut std::io::Cursor::new(bytes))
            .expect("EXIF block");
        let field = exif
            .get_field(exif::Tag::UserComment, exif::In::PRIMARY)
            .expect("UserComment");
        let exif::Value::Undefined(raw, _) = &field.value else {
            panic!("UserComment is not UNDEFINED: {:?}", field.value);
        };
        assert_eq!(&raw[..8], b"UNICODE\0");
        let units: Vec<u16> = raw[8..]
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).expect("UTF-16")
    }

    #[test]
    fn png_carries_parameters_chunk_and_pixels() {
        let img = sample();
        let bytes = encode(&img, OutputFormat::Png, 90, TEXT).unwrap();
        let decoder = png::Decoder::new(Cursor::new(&bytes));
        let reader = decoder.read_info().unwrap();
        let texts = &reader.info().uncompressed_latin1_text;
        assert_eq!(texts.len(), 1);
        assert_eq!(texts[0].keyword, "parameters");
        assert_eq!(texts[0].text, TEXT);
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back, img);
    }

    #[test]
    fn png_with_non_latin1_text_uses_itxt() {
        let text = "猫 🐱\nSteps: 8";
        let bytes = encode(&sample(), OutputFormat::Png, 90, text).unwrap();
        let reader = png::Decoder::new(Cursor::new(&bytes)).read_info().unwrap();
        let itxt = &reader.info().utf8_text;
        assert_eq!(itxt.len(), 1);
        assert_eq!(itxt[0].keyword, "parameters");
        assert_eq!(itxt[0].get_text().unwrap(), text);
    }

    #[test]
    fn jpeg_and_webp_carry_user_comment() {
        for format in [OutputFormat::Jpeg, OutputFormat::Webp] {
            let bytes = encode(&sample(), format, 85, TEXT).unwrap();
            assert_eq!(user_comment(&bytes), TEXT, "{format:?}");
            let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), (16, 8));
        }
        // WebP is lossless.
        let bytes = encode(&sample(), OutputFormat::Webp, 85, TEXT).unwrap();
        assert_eq!(image::load_from_memory(&bytes).unwrap().to_rgb8(), sample());
    }

    #[test]
    fn data_uri_has_mime_and_base64() {
        assert_eq!(
            data_uri(b"abc", OutputFormat::Png),
            "data:image/png;base64,YWJj"
        );
    }
}

//! unet

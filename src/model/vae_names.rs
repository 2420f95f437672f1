//! vae_names

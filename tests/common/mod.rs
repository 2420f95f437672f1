pub mod te_vae;

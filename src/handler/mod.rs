//! The image handler: a job's `input` → validated request → engine → encoded images with
//! metadata → the result body RunPod clients expect.

pub mod request;

//! Delta-weight math of every adapter kind, in f32, as ComfyUI computes it so that results
//! match what Civitai users see there (docs/formats.md, *Tensor suffixes and adapter kinds*).
//!
//! Every function returns the *unscaled* ΔW reshaped to the target's shape; the caller
//! applies `strength · α_eff` (or DoRA) and accumulates in f32 before one cast.

use candle_core::{Result, Tensor};

/// LoRA / LoCon: `up.flatten(1) @ down.flatten(1)`, with an optional Tucker core `mid`
/// `[r, r, kh, kw]` (down `[r, in, 1, 1]`, up `[out, r, 1, 1]`):
/// `ΔW[o,i,k,l] = Σ_{m,n} up[o,m] · mid[m,n,k,l] · down[n,i]`.
pub fn lora(up: &Tensor, down: &Tensor, mid: Option<&Tensor>, shape: &[usize]) -> Result<Tensor> {
    let up2 = up.flatten_from(1)?;
    match mid {
        None => up2.matmul(&down.flatten_from(1)?)?.reshape(shape),
        Some(mid) => {
            mid.dims4()?;
            let down2 = down.flatten_from(1)?; // [n, in]
            let core = mid.permute((2, 3, 0, 1))?.contiguous()?; // [kh, kw, m, n]
            let t = core.broadcast_matmul(&down2)?; // [kh, kw, m, in]
            let t = up2.broadcast_matmul(&t)?; // [kh, kw, out, in]
            t.permute((2, 3, 0, 1))?.contiguous()?.reshape(shape)
        }
    }
}

/// `einsum('i j k l, j r, i p -> p r k l', t, wb, wa)`: the Tucker form used by LoHa and
/// LoKr (`wa` is `[R, out]`, `wb` `[R, in]`, `t` `[R, R, kh, kw]`).
pub fn tucker(t: &Tensor, wb: &Tensor, wa: &Tensor) -> Result<Tensor> {
    let core = t.permute((2, 3, 0, 1))?.contiguous()?; // [k, l, i, j]
    let x = wa.t()?.contiguous()?.broadcast_matmul(&core)?; // [k, l, p, j]
    let x = x.broadcast_matmul(&wb.flatten_from(1)?)?; // [k, l, p, r]
    x.permute((2, 3, 0, 1))?.contiguous()
}

/// LoHa: `(w1a @ w1b) ⊙ (w2a @ w2b)`, or the Tucker forms when `t1`/`t2` are present.
#[allow(clippy::too_many_arguments)]
pub fn loha(
    w1a: &Tensor,
    w1b: &Tensor,
    w2a: &Tensor,
    w2b: &Tensor,
    t1: Option<&Tensor>,
    t2: Option<&Tensor>,
    shape: &[usize],
) -> Result<Tensor> {
    let m1 = match t1 {
        Some(t) => tucker(t, w1b, w1a)?,
        None => w1a.flatten_from(1)?.matmul(&w1b.flatten_from(1)?)?,
    };
    let m2 = match t2 {
        Some(t) => tucker(t, w2b, w2a)?,
        None => w2a.flatten_from(1)?.matmul(&w2b.flatten_from(1)?)?,
    };
    m1.reshape(shape)?.mul(&m2.reshape(shape)?)
}

/// Kronecker product over all dimensions (`torch.kron`): the lower-rank operand is given
/// trailing unit dimensions first. `kron(A, B)[i·p + k, …] = A[i, …] · B[k, …]`.
pub fn kron(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let rank = a.rank().max(b.rank());
    let pad = |t: &Tensor| -> Result<Tensor> {
        let mut dims = t.dims().to_vec();
        dims.resize(rank, 1);
        t.reshape(dims)
    };
    let (a, b) = (pad(a)?, pad(b)?);
    let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
    // a → [a0, 1, a1, 1, …], b → [1, b0, 1, b1, …], product → [a0, b0, a1, b1, …].
    let mut ash = Vec::with_capacity(2 * rank);
    let mut bsh = Vec::with_capacity(2 * rank);
    for d in 0..rank {
        ash.extend([ad[d], 1]);
        bsh.extend([1, bd[d]]);
    }
    let prod = a.reshape(ash)?.broadcast_mul(&b.reshape(bsh)?)?;
    let out: Vec<usize> = (0..rank).map(|d| ad[d] * bd[d]).collect();
    prod.reshape(out)
}

/// DoRA (weight decomposition, docs/formats.md, *DoRA*): returns the new weight for strength
/// `s` given the current weight `w` and the already α-scaled delta.
pub fn dora(w: &Tensor, scaled_delta: &Tensor, dora_scale: &Tensor, s: f64) -> Result<Tensor> {
    let w_c = (w + scaled_delta)?;
    let out_axis = dora_scale.dim(0)? == w.dim(0)?;
    let rank = w.rank();
    let eps = f32::EPSILON as f64;
    let norm = if out_axis {
        // ComfyUI's quirk: the norm of the weight *before* this delta, per output row.
        let rows = w.dim(0)?;
        let n = w.reshape((rows, ()))?.sqr()?.sum_keepdim(1)?.sqrt()?;
        let mut dims = vec![1; rank];
        dims[0] = rows;
        n.reshape(dims)?
    } else {
        // Per input column of the combined weight, over every other dimension.
        let cols = w_c.dim(1)?;
        let n = w_c
            .transpose(0, 1)?
            .contiguous()?
            .reshape((cols, ()))?
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?;
        let mut dims = vec![1; rank];
        dims[1] = cols;
        n.reshape(dims)?
    };
    let norm = (norm + eps)?;
    let scale = dora_scale.reshape(norm.dims())?;
    let w_c = w_c.broadcast_mul(&scale.broadcast_div(&norm)?)?;
    if s == 1.0 {
        Ok(w_c)
    } else {
        w + ((w_c - w)? * s)?
    }
}

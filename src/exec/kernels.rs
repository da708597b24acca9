//! CPU kernels of the reference executor, over NCHW FP32 batches: convolution as im2col + GEMM
//! (`matrixmultiply`), pooling with PyTorch's padding and ceil-mode rules, batch norm, the
//! activations, fully connected layers, joins and softmax. They favour being obviously correct
//! over being fast: the executor is the ground truth the serving path's outputs come from.

/// Row-major `c[m×n] = a[m×k] · b[k×n]` (overwrites `c`), with explicit element strides for `a`
/// and `b` so transposed operands need no copy.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    // The largest element offset each operand is read at must be inside its slice; this is what
    // makes the raw-pointer call below sound.
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "gemm: a too short");
    assert!((k - 1) * rsb + (n - 1) * csb < b.len(), "gemm: b too short");
    assert!(m * n <= c.len(), "gemm: c too short");
    let s = |x: usize| x as isize;
    // SAFETY: bounds checked above; `c` is exclusively borrowed and does not alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            s(rsa),
            s(csa),
            b.as_ptr(),
            s(rsb),
            s(csb),
            0.0,
            c.as_mut_ptr(),
            s(n),
            1,
        );
    }
}

/// Geometry of a 2-D convolution on one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    fn cin_g(&self) -> usize {
        self.cin / self.groups
    }
    fn cout_g(&self) -> usize {
        self.cout / self.groups
    }
    /// Rows of the im2col matrix of one group (= the GEMM's inner dimension).
    fn k_g(&self) -> usize {
        self.cin_g() * self.kernel.0 * self.kernel.1
    }
    /// Weight elements: `cout × cin/groups × kh × kw`.
    #[cfg(test)]
    pub fn weight_len(&self) -> usize {
        self.cout * self.k_g()
    }
    fn is_pointwise(&self) -> bool {
        // The output size rules out padding after the input, which the geometry does not hold.
        self.kernel == (1, 1)
            && self.stride == (1, 1)
            && self.padding == (0, 0)
            && (self.oh, self.ow) == (self.h, self.w)
    }
}

/// im2col of channels `c0..c0+cin_g` of one sample: row `(c, ky, kx)`, column `(oy, ox)`.
fn im2col(x: &[f32], g: &ConvGeom, c0: usize, col: &mut [f32]) {
    let (kh, kw) = g.kernel;
    let plane = g.oh * g.ow;
    for c in 0..g.cin_g() {
        let src = &x[(c0 + c) * g.h * g.w..(c0 + c + 1) * g.h * g.w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = (c * kh + ky) * kw + kx;
                let dst = &mut col[row * plane..(row + 1) * plane];
                for oy in 0..g.oh {
                    // Input row of this output row, or None inside the padding.
                    let iy = (oy * g.stride.0 + ky * g.dilation.0).checked_sub(g.padding.0);
                    let out_row = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                    match iy.filter(|&iy| iy < g.h) {
                        None => out_row.fill(0.0),
                        Some(iy) => {
                            let in_row = &src[iy * g.w..(iy + 1) * g.w];
                            for (ox, o) in out_row.iter_mut().enumerate() {
                                let ix = (ox * g.stride.1 + kx * g.dilation.1)
                                    .checked_sub(g.padding.1)
                                    .filter(|&ix| ix < g.w);
                                *o = ix.map_or(0.0, |ix| in_row[ix]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Convolution of `n` samples: `x` is `n × cin × h × w`, `out` is `n × cout × oh × ow`.
pub fn conv2d(
    x: &[f32],
    n: usize,
    g: &ConvGeom,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (in_len, out_plane) = (g.cin * g.h * g.w, g.oh * g.ow);
    let out_len = g.cout * out_plane;
    let (k, cout_g) = (g.k_g(), g.cout_g());
    let direct = g.is_pointwise();
    if !direct {
        scratch.resize(k * out_plane, 0.0);
    }
    for s in 0..n {
        let xs = &x[s * in_len..(s + 1) * in_len];
        let ys = &mut out[s * out_len..(s + 1) * out_len];
        for grp in 0..g.groups {
            let c0 = grp * g.cin_g();
            let col: &[f32] = if direct {
                // A 1×1 stride-1 convolution's im2col matrix is the input itself.
                &xs[c0 * out_plane..(c0 + g.cin_g()) * out_plane]
            } else {
                im2col(xs, g, c0, scratch);
                scratch
            };
            let wg = &weight[grp * cout_g * k..(grp + 1) * cout_g * k];
            let yg = &mut ys[grp * cout_g * out_plane..(grp + 1) * cout_g * out_plane];
            gemm(cout_g, k, out_plane, wg, (k, 1), col, (out_plane, 1), yg);
        }
        if let Some(b) = bias {
            for (plane, &bv) in ys.chunks_exact_mut(out_plane).zip(b) {
                plane.iter_mut().for_each(|v| *v += bv);
            }
        }
    }
}

/// Fully connected layer: `x` is `n × fin`, `weight` is `fout × fin` (PyTorch layout), `out` is
/// `n × fout`.
pub fn linear(
    x: &[f32],
    n: usize,
    fin: usize,
    fout: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    // out = x · weightᵀ: read the weight with swapped strides instead of transposing it.
    gemm(n, fin, fout, x, (fin, 1), weight, (1, fin), out);
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(fout) {
            row.iter_mut().zip(b).for_each(|(v, bv)| *v += bv);
        }
    }
}

/// Inference batch norm per channel: `y = (x − mean) / √(var + eps) · gamma + beta`.
pub struct BatchNormParams<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub eps: f32,
}

pub fn batch_norm(x: &mut [f32], channels: usize, plane: usize, p: &BatchNormParams<'_>) {
    let scale: Vec<f32> = (0..channels)
        .map(|c| p.gamma[c] / (p.var[c] + p.eps).sqrt())
        .collect();
    for (i, chunk) in x.chunks_exact_mut(plane).enumerate() {
        let c = i % channels;
        let (s, m, b) = (scale[c], p.mean[c], p.beta[c]);
        chunk.iter_mut().for_each(|v| *v = (*v - m) * s + b);
    }
}

pub fn relu(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
}

/// `max(x, 0) + alpha · min(x, 0)`.
pub fn leaky_relu(x: &mut [f32], alpha: f32) {
    x.iter_mut()
        .for_each(|v| *v = if *v < 0.0 { alpha * *v } else { *v });
}

pub fn sigmoid(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
}

/// `clamp(alpha · x + beta, 0, 1)`.
pub fn hard_sigmoid(x: &mut [f32], alpha: f32, beta: f32) {
    x.iter_mut()
        .for_each(|v| *v = (alpha * *v + beta).clamp(0.0, 1.0));
}

/// `x · clamp(x / 6 + 1/2, 0, 1)`.
pub fn hard_swish(x: &mut [f32]) {
    x.iter_mut()
        .for_each(|v| *v *= (*v / 6.0 + 0.5).clamp(0.0, 1.0));
}

/// `clamp(x, min, max)`; NaN stays NaN as in ONNX Runtime.
pub fn clip(x: &mut [f32], min: f32, max: f32) {
    x.iter_mut().for_each(|v| *v = v.max(min).min(max));
}

pub fn relu6(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
}

/// Pooling window geometry on one channel plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    pub h: usize,
    pub w: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Padding before the input (top, left).
    pub padding: (usize, usize),
    /// Padding after the input (bottom, right).
    pub padding_end: (usize, usize),
    pub dilation: (usize, usize),
    pub oh: usize,
    pub ow: usize,
}

impl PoolGeom {
    /// Input rows (or columns) the window of output `o` covers along one axis: positions
    /// `start + k·dilation` for each kernel tap `k`, in input coordinates (negative or past the
    /// end inside the padding, or past it in ceil mode).
    fn taps(
        o: usize,
        stride: usize,
        pad: usize,
        kernel: usize,
        dilation: usize,
    ) -> impl Iterator<Item = isize> {
        let start = (o * stride) as isize - pad as isize;
        (0..kernel).map(move |k| start + (k * dilation) as isize)
    }
}

/// Max pooling over `planes` channel planes (padding never wins: it is −∞).
pub fn max_pool(x: &[f32], planes: usize, g: &PoolGeom, out: &mut [f32]) {
    let (h, w) = (g.h as isize, g.w as isize);
    for p in 0..planes {
        let src = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        let dst = &mut out[p * g.oh * g.ow..(p + 1) * g.oh * g.ow];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut m = f32::NEG_INFINITY;
                for y in PoolGeom::taps(oy, g.stride.0, g.padding.0, g.kernel.0, g.dilation.0)
                    .filter(|y| (0..h).contains(y))
                {
                    for xx in PoolGeom::taps(ox, g.stride.1, g.padding.1, g.kernel.1, g.dilation.1)
                        .filter(|xx| (0..w).contains(xx))
                    {
                        m = m.max(src[(y * w + xx) as usize]);
                    }
                }
                dst[oy * g.ow + ox] = m;
            }
        }
    }
}

/// Average pooling. With `count_include_pad` (PyTorch's default) the divisor counts the window's
/// taps inside input + padding, not those a ceil-mode window sticks out beyond it; without, only
/// the taps inside the input.
pub fn avg_pool(x: &[f32], planes: usize, g: &PoolGeom, out: &mut [f32], count_include_pad: bool) {
    let (h, w) = (g.h as isize, g.w as isize);
    let rows = |lo: isize, hi: isize| lo..hi;
    let (y_in, x_in) = (rows(0, h), rows(0, w));
    let (y_pad, x_pad) = if count_include_pad {
        (
            rows(-(g.padding.0 as isize), h + g.padding_end.0 as isize),
            rows(-(g.padding.1 as isize), w + g.padding_end.1 as isize),
        )
    } else {
        (y_in.clone(), x_in.clone())
    };
    for p in 0..planes {
        let src = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        let dst = &mut out[p * g.oh * g.ow..(p + 1) * g.oh * g.ow];
        for oy in 0..g.oh {
            let ys = || PoolGeom::taps(oy, g.stride.0, g.padding.0, g.kernel.0, g.dilation.0);
            let y_count = ys().filter(|y| y_pad.contains(y)).count();
            for ox in 0..g.ow {
                let xs = || PoolGeom::taps(ox, g.stride.1, g.padding.1, g.kernel.1, g.dilation.1);
                let divisor = y_count * xs().filter(|xx| x_pad.contains(xx)).count();
                let mut sum = 0.0f32;
                for y in ys().filter(|y| y_in.contains(y)) {
                    for xx in xs().filter(|xx| x_in.contains(xx)) {
                        sum += src[(y * w + xx) as usize];
                    }
                }
                dst[oy * g.ow + ox] = if divisor > 0 {
                    sum / divisor as f32
                } else {
                    0.0
                };
            }
        }
    }
}

/// Mean of each channel plane.
pub fn global_avg_pool(x: &[f32], plane: usize, out: &mut [f32]) {
    for (o, chunk) in out.iter_mut().zip(x.chunks_exact(plane)) {
        *o = chunk.iter().sum::<f32>() / plane as f32;
    }
}

/// Softmax over channels at every spatial position of every sample (PyTorch's `dim=1`).
pub fn softmax_channels(x: &mut [f32], channels: usize, plane: usize) {
    for sample in x.chunks_exact_mut(channels * plane) {
        for pos in 0..plane {
            let at = |c: usize| c * plane + pos;
            let max = (0..channels)
                .map(|c| sample[at(c)])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for c in 0..channels {
                let e = (sample[at(c)] - max).exp();
                sample[at(c)] = e;
                sum += e;
            }
            for c in 0..channels {
                sample[at(c)] /= sum;
            }
        }
    }
}

/// Local response normalisation (PyTorch's `LocalResponseNorm`, ONNX's LRN): each value is
/// divided by `(k + α/size · Σ x²)^β` over `size` neighbouring channels (the window is
/// zero-padded by ⌊size/2⌋ before and ⌊(size−1)/2⌋ after the channel).
pub struct LrnParams {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
}

pub fn lrn(x: &[f32], channels: usize, plane: usize, p: &LrnParams, out: &mut [f32]) {
    let size = p.size;
    let before = size / 2;
    let after = (size - 1) / 2;
    for (xs, ys) in x
        .chunks_exact(channels * plane)
        .zip(out.chunks_exact_mut(channels * plane))
    {
        for c in 0..channels {
            let lo = c.saturating_sub(before);
            let hi = (c + after).min(channels - 1);
            for pos in 0..plane {
                let sq: f32 = (lo..=hi).map(|j| xs[j * plane + pos].powi(2)).sum();
                let v = xs[c * plane + pos];
                ys[c * plane + pos] = v / (p.k + p.alpha / size as f32 * sq).powf(p.beta);
            }
        }
    }
}

#[cfg(test)]
#[path = "kernels_tests.rs"]
mod tests;

//! Kernel checks: hand-computed small cases, and im2col + GEMM against a direct six-loop
//! convolution over random geometries.

use proptest::prelude::*;

use super::*;

fn geom(cin: usize, h: usize, w: usize, cout: usize, k: usize) -> ConvGeom {
    ConvGeom {
        cin,
        h,
        w,
        cout,
        kernel: (k, k),
        stride: (1, 1),
        padding: (0, 0),
        dilation: (1, 1),
        groups: 1,
        oh: h + 1 - k,
        ow: w + 1 - k,
    }
}

/// The textbook definition, for comparison.
fn conv_direct(x: &[f32], n: usize, g: &ConvGeom, wt: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let mut out = vec![0.0; n * g.cout * g.oh * g.ow];
    for s in 0..n {
        for o in 0..g.cout {
            let grp = o / cout_g;
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = bias.map_or(0.0, |b| b[o]);
                    for ci in 0..cin_g {
                        let c = grp * cin_g + ci;
                        for ky in 0..g.kernel.0 {
                            for kx in 0..g.kernel.1 {
                                let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize
                                    - g.padding.0 as isize;
                                let ix = (ox * g.stride.1 + kx * g.dilation.1) as isize
                                    - g.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((s * g.cin + c) * g.h + iy as usize) * g.w + ix as usize];
                                let wv = wt[((o * cin_g + ci) * g.kernel.0 + ky) * g.kernel.1 + kx];
                                acc += xv * wv;
                            }
                        }
                    }
                    out[((s * g.cout + o) * g.oh + oy) * g.ow + ox] = acc;
                }
            }
        }
    }
    out
}

#[test]
fn conv_hand_computed() {
    // 1 channel 3×3 input, 2×2 kernel of ones plus bias 0.5: each output sums a 2×2 window.
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let g = geom(1, 3, 3, 1, 2);
    let mut out = vec![0.0; 4];
    conv2d(
        &x,
        1,
        &g,
        &[1.0; 4],
        Some(&[0.5]),
        &mut out,
        &mut Vec::new(),
    );
    assert_eq!(out, vec![12.5, 16.5, 24.5, 28.5]);

    // Padding 1, stride 2, kernel [[0,0],[0,1]] picks x[2oy, 2ox] shifted by the padding.
    let g = ConvGeom {
        padding: (1, 1),
        stride: (2, 2),
        oh: 2,
        ow: 2,
        ..geom(1, 3, 3, 1, 2)
    };
    let mut out = vec![0.0; 4];
    conv2d(
        &x,
        1,
        &g,
        &[0.0, 0.0, 0.0, 1.0],
        None,
        &mut out,
        &mut Vec::new(),
    );
    assert_eq!(out, vec![1.0, 3.0, 7.0, 9.0]);
}

#[test]
fn pointwise_and_grouped_conv_hand_computed() {
    // 2 channels 1×2, 1×1 conv to 1 channel with weights (2, -1): 2·a − b.
    let x = [1.0, 2.0, 10.0, 20.0];
    let g = geom(2, 1, 2, 1, 1);
    let mut out = vec![0.0; 2];
    conv2d(&x, 1, &g, &[2.0, -1.0], None, &mut out, &mut Vec::new());
    assert_eq!(out, vec![-8.0, -16.0]);
    // Depthwise (groups = 2): each channel scaled by its own weight.
    let g = ConvGeom {
        groups: 2,
        cout: 2,
        ..g
    };
    let mut out = vec![0.0; 4];
    conv2d(&x, 1, &g, &[3.0, 0.5], None, &mut out, &mut Vec::new());
    assert_eq!(out, vec![3.0, 6.0, 5.0, 10.0]);
}

#[test]
fn linear_hand_computed() {
    // Two samples of 3 features, 2 outputs: W = [[1,0,1],[0,2,0]], b = (1, -1).
    let x = [1.0, 2.0, 3.0, -1.0, 0.5, 4.0];
    let w = [1.0, 0.0, 1.0, 0.0, 2.0, 0.0];
    let mut out = vec![0.0; 4];
    linear(&x, 2, 3, 2, &w, Some(&[1.0, -1.0]), &mut out);
    assert_eq!(out, vec![5.0, 3.0, 4.0, 0.0]);
}

#[test]
fn max_pool_padding_and_ceil_mode() {
    // 3×3 input, 2×2 window stride 2, ceil mode: the last window covers a single column/row.
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let g = PoolGeom {
        h: 3,
        w: 3,
        kernel: (2, 2),
        stride: (2, 2),
        padding: (0, 0),
        padding_end: (0, 0),
        dilation: (1, 1),
        oh: 2,
        ow: 2,
    };
    let mut out = vec![0.0; 4];
    max_pool(&x, 1, &g, &mut out);
    assert_eq!(out, vec![5.0, 6.0, 8.0, 9.0]);
    // Padding 1, 3×3 window stride 2 (ResNet's stem pool) on negative values: padding never wins.
    let neg: Vec<f32> = x.iter().map(|v| -v).collect();
    let g = PoolGeom {
        kernel: (3, 3),
        padding: (1, 1),
        padding_end: (1, 1),
        ..g
    };
    max_pool(&neg, 1, &g, &mut out);
    // Windows start at −1 and 1 on each axis; a zero padding would win every window.
    assert_eq!(out, vec![-1.0, -2.0, -4.0, -5.0]);
}

#[test]
fn avg_pool_counts_padding_but_not_ceil_overhang() {
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    // 3×3 window, stride 1, padding 1: the corner window holds 4 real cells and 5 padding cells,
    // and PyTorch divides by 9.
    let g = PoolGeom {
        h: 3,
        w: 3,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
        padding_end: (1, 1),
        dilation: (1, 1),
        oh: 3,
        ow: 3,
    };
    let mut out = vec![0.0; 9];
    avg_pool(&x, 1, &g, &mut out, true);
    assert_eq!(out[0], (1.0 + 2.0 + 4.0 + 5.0) / 9.0);
    assert_eq!(out[4], 45.0 / 9.0);
    // 2×2 stride 2 ceil mode on 3×3: the overhanging windows divide by the cells inside only.
    let g = PoolGeom {
        kernel: (2, 2),
        stride: (2, 2),
        padding: (0, 0),
        padding_end: (0, 0),
        oh: 2,
        ow: 2,
        ..g
    };
    let mut out = vec![0.0; 4];
    avg_pool(&x, 1, &g, &mut out, true);
    assert_eq!(out, vec![3.0, 4.5, 7.5, 9.0]);
}

#[test]
fn avg_pool_without_padding_in_the_divisor_and_asymmetric_padding() {
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    // 2×2 stride 2 with padding only after the input (ONNX pads [0,0,1,1]): the last window
    // of each axis covers one input cell and one padding cell.
    let g = PoolGeom {
        h: 3,
        w: 3,
        kernel: (2, 2),
        stride: (2, 2),
        padding: (0, 0),
        padding_end: (1, 1),
        dilation: (1, 1),
        oh: 2,
        ow: 2,
    };
    let mut out = vec![0.0; 4];
    avg_pool(&x, 1, &g, &mut out, true);
    assert_eq!(out, vec![3.0, 4.5 / 2.0, 7.5 / 2.0, 9.0 / 4.0]);
    avg_pool(&x, 1, &g, &mut out, false);
    assert_eq!(out, vec![3.0, 4.5, 7.5, 9.0]);
}

#[test]
fn dilated_max_pool_skips_taps() {
    // 1×5 row, kernel 2 with dilation 2: windows {0, 2}, {1, 3}, {2, 4}.
    let x = [5.0, 1.0, 3.0, 9.0, 4.0];
    let g = PoolGeom {
        h: 1,
        w: 5,
        kernel: (1, 2),
        stride: (1, 1),
        padding: (0, 0),
        padding_end: (0, 0),
        dilation: (1, 2),
        oh: 1,
        ow: 3,
    };
    let mut out = vec![0.0; 3];
    max_pool(&x, 1, &g, &mut out);
    assert_eq!(out, vec![5.0, 9.0, 4.0]);
    avg_pool(&x, 1, &g, &mut out, true);
    assert_eq!(out, vec![4.0, 5.0, 3.5]);
}

#[test]
fn activations() {
    let mut v = vec![-2.0, -0.5, 0.0, 1.0, 4.0, 8.0];
    leaky_relu(&mut v, 0.1);
    assert_eq!(v, vec![-0.2, -0.05, 0.0, 1.0, 4.0, 8.0]);
    let mut v = vec![-4.0, 0.0, 1.0, 4.0];
    hard_sigmoid(&mut v, 0.2, 0.5);
    assert_eq!(v, vec![0.0, 0.5, 0.7, 1.0]);
    let mut v = vec![-4.0, -1.5, 0.0, 3.0, 6.0];
    hard_swish(&mut v);
    assert_eq!(v, vec![-0.0, -0.375, 0.0, 3.0, 6.0]);
    let mut v = vec![-1.0, 0.25, 2.0];
    clip(&mut v, -0.5, 0.5);
    assert_eq!(v, vec![-0.5, 0.25, 0.5]);
    let mut v = vec![0.0, 2.0f32.ln()];
    sigmoid(&mut v);
    assert_eq!(v[0], 0.5);
    assert!((v[1] - 2.0 / 3.0).abs() < 1e-6);
}

#[test]
fn batch_norm_global_pool_softmax_lrn() {
    let mut x = vec![1.0, 3.0, 10.0, 30.0];
    let p = BatchNormParams {
        gamma: &[2.0, 1.0],
        beta: &[0.0, 1.0],
        mean: &[1.0, 10.0],
        var: &[4.0, 100.0],
        eps: 0.0,
    };
    batch_norm(&mut x, 2, 2, &p);
    assert_eq!(x, vec![0.0, 2.0, 1.0, 3.0]);

    let mut g = vec![0.0; 2];
    global_avg_pool(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, &mut g);
    assert_eq!(g, vec![2.0, 5.0]);

    let mut s = vec![0.0, (2.0f32).ln(), 5.0, 5.0];
    softmax_channels(&mut s, 2, 1);
    assert!((s[0] - 1.0 / 3.0).abs() < 1e-6 && (s[1] - 2.0 / 3.0).abs() < 1e-6);
    assert_eq!(&s[2..], &[0.5, 0.5]);

    // size 2: channel c sums c-1 and c (PyTorch pads one channel before, none after).
    let x = [1.0, 100.0];
    let mut y = [0.0; 2];
    let p = LrnParams {
        size: 2,
        alpha: 1e-4,
        beta: 0.75,
        k: 1.0,
    };
    lrn(&x, 2, 1, &p, &mut y);
    assert!((y[0] - 1.0 / (1.0f32 + 1e-4 / 2.0).powf(0.75)).abs() < 1e-6);
    assert!((y[1] - 100.0 / (1.0f32 + 1e-4 / 2.0 * 10001.0).powf(0.75)).abs() < 1e-4);
    // ONNX's bias 2, alpha 1e-2, beta 0.5.
    let p = LrnParams {
        size: 2,
        alpha: 1e-2,
        beta: 0.5,
        k: 2.0,
    };
    lrn(&x, 2, 1, &p, &mut y);
    assert!((y[1] - 100.0 / (2.0f32 + 1e-2 / 2.0 * 10001.0).sqrt()).abs() < 1e-4);
}

fn geometry() -> impl Strategy<Value = ConvGeom> {
    (
        1usize..4,
        1usize..4,
        3usize..9,
        3usize..9,
        1usize..4,
        1usize..4,
        1usize..3,
        0usize..3,
        1usize..3,
    )
        .prop_filter_map(
            "no output",
            |(groups, cg, h, w, og, kh, stride, pad, dil)| {
                let kw = (kh % 3) + 1;
                let span_h = dil * (kh - 1) + 1;
                let span_w = dil * (kw - 1) + 1;
                if h + 2 * pad < span_h || w + 2 * pad < span_w {
                    return None;
                }
                Some(ConvGeom {
                    cin: groups * cg,
                    h,
                    w,
                    cout: groups * og,
                    kernel: (kh, kw),
                    stride: (stride, stride),
                    padding: (pad, pad),
                    dilation: (dil, dil),
                    groups,
                    oh: (h + 2 * pad - span_h) / stride + 1,
                    ow: (w + 2 * pad - span_w) / stride + 1,
                })
            },
        )
}

proptest! {
    #[test]
    fn im2col_gemm_matches_direct_convolution(g in geometry(), n in 1usize..3, seed in 0u64..1000) {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let x: Vec<f32> = (0..n * g.cin * g.h * g.w).map(|_| next()).collect();
        let wt: Vec<f32> = (0..g.weight_len()).map(|_| next()).collect();
        let b: Vec<f32> = (0..g.cout).map(|_| next()).collect();
        let mut out = vec![f32::NAN; n * g.cout * g.oh * g.ow];
        conv2d(&x, n, &g, &wt, Some(&b), &mut out, &mut Vec::new());
        let want = conv_direct(&x, n, &g, &wt, Some(&b));
        for (a, e) in out.iter().zip(&want) {
            prop_assert!((a - e).abs() < 1e-4, "{a} vs {e} for {g:?}");
        }
    }
}

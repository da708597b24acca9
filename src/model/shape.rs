//! Shape inference: the output shape of one operator from its input shapes, with PyTorch's
//! arithmetic (floor division for convolutions, optional ceil mode for pooling).

use super::{ModelError, Op, Shape};

/// Output length of a sliding window along one axis, as `torch.nn.Conv2d` / `MaxPool2d` compute it.
///
/// `ceil_mode` rounds the window count up, but (like PyTorch) drops a last window that would start
/// entirely in the right padding. Returns `None` when no window fits.
pub fn window_output(
    input: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
    dilation: u32,
    ceil_mode: bool,
) -> Option<u32> {
    window_output_asym(
        input,
        kernel,
        stride,
        (padding, padding),
        dilation,
        ceil_mode,
    )
}

/// [`window_output`] with different padding before and after the input (`(begin, end)`).
pub fn window_output_asym(
    input: u32,
    kernel: u32,
    stride: u32,
    (padding, padding_end): (u32, u32),
    dilation: u32,
    ceil_mode: bool,
) -> Option<u32> {
    let padded = u64::from(input) + u64::from(padding) + u64::from(padding_end);
    let span = u64::from(dilation) * (u64::from(kernel).checked_sub(1)?) + 1;
    if stride == 0 || padded < span {
        return None;
    }
    let stride = u64::from(stride);
    let room = padded - span;
    let mut out = if ceil_mode {
        room.div_ceil(stride) + 1
    } else {
        room / stride + 1
    };
    if ceil_mode && (out - 1) * stride >= u64::from(input) + u64::from(padding) {
        out -= 1;
    }
    u32::try_from(out).ok().filter(|&o| o > 0)
}

/// Infers the per-sample output shape of `op` applied to `inputs` (named `layer` in errors).
pub fn infer_output(layer: &str, op: &Op, inputs: &[Shape]) -> Result<Shape, ModelError> {
    let err_layer = || layer.to_string();
    if op.is_join() {
        if inputs.is_empty() {
            return Err(ModelError::Arity {
                layer: err_layer(),
                op: op.kind_name(),
                expected: "at least 1",
                found: 0,
            });
        }
    } else if inputs.len() != 1 {
        return Err(ModelError::Arity {
            layer: err_layer(),
            op: op.kind_name(),
            expected: "exactly 1",
            found: inputs.len(),
        });
    }
    let x = inputs[0];
    match op {
        Op::Conv2d {
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            padding_end,
            ..
        } => {
            check_nonzero(layer, "kernel", *kernel)?;
            check_nonzero(layer, "stride", *stride)?;
            check_nonzero(layer, "dilation", *dilation)?;
            if *out_channels == 0 {
                return Err(invalid(layer, "out_channels is 0"));
            }
            if *groups == 0 || !x.c.is_multiple_of(*groups) || !out_channels.is_multiple_of(*groups)
            {
                return Err(ModelError::BadGroups {
                    layer: err_layer(),
                    in_channels: x.c,
                    out_channels: *out_channels,
                    groups: *groups,
                });
            }
            let empty = || ModelError::EmptyOutput {
                layer: err_layer(),
                input: x,
            };
            let end = padding_end.unwrap_or(*padding);
            let h = window_output_asym(
                x.h,
                kernel.0,
                stride.0,
                (padding.0, end.0),
                dilation.0,
                false,
            )
            .ok_or_else(empty)?;
            let w = window_output_asym(
                x.w,
                kernel.1,
                stride.1,
                (padding.1, end.1),
                dilation.1,
                false,
            )
            .ok_or_else(empty)?;
            Ok(Shape::new(*out_channels, h, w))
        }
        Op::MaxPool {
            kernel,
            stride,
            padding,
            ceil_mode,
            padding_end,
            dilation,
        }
        | Op::AvgPool {
            kernel,
            stride,
            padding,
            ceil_mode,
            padding_end,
            dilation,
            ..
        } => {
            check_nonzero(layer, "kernel", *kernel)?;
            check_nonzero(layer, "stride", *stride)?;
            check_nonzero(layer, "dilation", *dilation)?;
            let end = padding_end.unwrap_or(*padding);
            // PyTorch and ONNX Runtime refuse padding of a whole window or more (a window could
            // then pool over nothing but padding).
            let span = |k: u32, d: u32| d * (k - 1) + 1;
            let (sh, sw) = (span(kernel.0, dilation.0), span(kernel.1, dilation.1));
            if [padding.0, end.0].iter().any(|&p| 2 * p > sh)
                || [padding.1, end.1].iter().any(|&p| 2 * p > sw)
            {
                return Err(invalid(layer, "pooling padding exceeds half the kernel"));
            }
            let empty = || ModelError::EmptyOutput {
                layer: err_layer(),
                input: x,
            };
            let h = window_output_asym(
                x.h,
                kernel.0,
                stride.0,
                (padding.0, end.0),
                dilation.0,
                *ceil_mode,
            )
            .ok_or_else(empty)?;
            let w = window_output_asym(
                x.w,
                kernel.1,
                stride.1,
                (padding.1, end.1),
                dilation.1,
                *ceil_mode,
            )
            .ok_or_else(empty)?;
            Ok(Shape::new(x.c, h, w))
        }
        Op::GlobalAvgPool => Ok(Shape::new(x.c, 1, 1)),
        Op::Linear { out_features, .. } => {
            if x.h != 1 || x.w != 1 {
                return Err(ModelError::NotFlat {
                    layer: err_layer(),
                    input: x,
                });
            }
            if *out_features == 0 {
                return Err(invalid(layer, "out_features is 0"));
            }
            Ok(Shape::new(*out_features, 1, 1))
        }
        Op::Flatten => {
            let c = u32::try_from(x.elements())
                .map_err(|_| ModelError::Overflow { layer: err_layer() })?;
            Ok(Shape::new(c, 1, 1))
        }
        Op::Add => {
            if let Some(other) = inputs.iter().find(|s| **s != x) {
                return Err(ModelError::ShapeMismatch {
                    layer: err_layer(),
                    first: x,
                    other: *other,
                });
            }
            Ok(x)
        }
        Op::Concat => {
            let mut c: u32 = 0;
            for s in inputs {
                if (s.h, s.w) != (x.h, x.w) {
                    return Err(ModelError::SpatialMismatch {
                        layer: err_layer(),
                        first: x,
                        other: *s,
                    });
                }
                c = c
                    .checked_add(s.c)
                    .ok_or_else(|| ModelError::Overflow { layer: err_layer() })?;
            }
            Ok(Shape::new(c, x.h, x.w))
        }
        Op::Lrn { size, .. } => {
            if *size == 0 {
                return Err(invalid(layer, "LRN size is 0"));
            }
            Ok(x)
        }
        Op::Clip { min, max } if min.partial_cmp(max).is_none_or(|o| o.is_gt()) => {
            Err(invalid(layer, "clip min exceeds max (or is NaN)"))
        }
        Op::BatchNorm
        | Op::Relu
        | Op::Relu6
        | Op::LeakyRelu { .. }
        | Op::Sigmoid
        | Op::HardSigmoid { .. }
        | Op::HardSwish
        | Op::Clip { .. }
        | Op::Softmax
        | Op::Dropout => Ok(x),
    }
}

fn check_nonzero(layer: &str, what: &str, v: (u32, u32)) -> Result<(), ModelError> {
    if v.0 == 0 || v.1 == 0 {
        Err(invalid(
            layer,
            &format!("{what} has a zero component {v:?}"),
        ))
    } else {
        Ok(())
    }
}

fn invalid(layer: &str, reason: &str) -> ModelError {
    ModelError::InvalidParameter {
        layer: layer.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(out: u32, k: u32, s: u32, p: u32, d: u32, groups: u32) -> Op {
        Op::Conv2d {
            out_channels: out,
            kernel: (k, k),
            stride: (s, s),
            padding: (p, p),
            dilation: (d, d),
            groups,
            bias: false,
            padding_end: None,
        }
    }

    fn max_pool(k: u32, s: u32, p: u32, ceil_mode: bool) -> Op {
        Op::MaxPool {
            kernel: (k, k),
            stride: (s, s),
            padding: (p, p),
            ceil_mode,
            padding_end: None,
            dilation: (1, 1),
        }
    }

    #[test]
    fn conv_output_size_follows_pytorch_formula() {
        // floor((224 + 2*3 - 1*(7-1) - 1) / 2) + 1 = floor(223/2) + 1 = 112
        let s = infer_output("c", &conv(64, 7, 2, 3, 1, 1), &[Shape::new(3, 224, 224)]).unwrap();
        assert_eq!(s, Shape::new(64, 112, 112));
        // AlexNet conv1: floor((224 + 4 - 10 - 1) / 4) + 1 = floor(217/4) + 1 = 55
        let s = infer_output("c", &conv(64, 11, 4, 2, 1, 1), &[Shape::new(3, 224, 224)]).unwrap();
        assert_eq!(s, Shape::new(64, 55, 55));
        // Dilation 2 on a 3x3 kernel spans 5: floor((10 + 0 - 4 - 1) / 1) + 1 = 6
        let s = infer_output("c", &conv(8, 3, 1, 0, 2, 1), &[Shape::new(4, 10, 10)]).unwrap();
        assert_eq!(s, Shape::new(8, 6, 6));
        // Dilation 2 with padding 2 keeps the size: floor((10 + 4 - 4 - 1) / 1) + 1 = 10
        let s = infer_output("c", &conv(8, 3, 1, 2, 2, 1), &[Shape::new(4, 10, 10)]).unwrap();
        assert_eq!(s, Shape::new(8, 10, 10));
    }

    #[test]
    fn asymmetric_kernels_use_per_axis_padding() {
        let op = Op::Conv2d {
            out_channels: 192,
            kernel: (1, 7),
            stride: (1, 1),
            padding: (0, 3),
            dilation: (1, 1),
            groups: 1,
            bias: false,
            padding_end: None,
        };
        let s = infer_output("c", &op, &[Shape::new(128, 17, 17)]).unwrap();
        assert_eq!(s, Shape::new(192, 17, 17));
    }

    #[test]
    fn ceil_mode_pooling_adds_the_partial_window() {
        // GoogLeNet maxpool1: (112 - 3) / 2 = 54.5 -> floor gives 55, ceil gives 56.
        let x = [Shape::new(64, 112, 112)];
        assert_eq!(
            infer_output("p", &max_pool(3, 2, 0, false), &x).unwrap(),
            Shape::new(64, 55, 55)
        );
        assert_eq!(
            infer_output("p", &max_pool(3, 2, 0, true), &x).unwrap(),
            Shape::new(64, 56, 56)
        );
        // 14 -> k2 s2: exact division, ceil mode changes nothing.
        assert_eq!(window_output(14, 2, 2, 0, 1, true), Some(7));
    }

    #[test]
    fn ceil_mode_drops_a_window_that_starts_in_the_padding() {
        // input 5, k=2, s=2, p=1: padded 7, room 5 -> ceil(5/2)+1 = 4 windows starting at input
        // positions -1, 1, 3, 5; the last lies wholly in the right padding, so PyTorch keeps 3.
        assert_eq!(window_output(5, 2, 2, 1, 1, true), Some(3));
        assert_eq!(window_output(5, 2, 2, 1, 1, false), Some(3));
        // input 6, k=3, s=2, p=1: room 5 -> ceil 4; the last window starts at input position 5,
        // still inside the input, so it is kept (floor mode gives 3).
        assert_eq!(window_output(6, 3, 2, 1, 1, true), Some(4));
        assert_eq!(window_output(6, 3, 2, 1, 1, false), Some(3));
    }

    #[test]
    fn window_larger_than_input_is_an_error() {
        let err = infer_output("c", &conv(8, 5, 1, 0, 1, 1), &[Shape::new(4, 3, 3)]).unwrap_err();
        assert!(matches!(err, ModelError::EmptyOutput { .. }), "{err}");
        assert_eq!(window_output(3, 5, 1, 1, 1, false), Some(1));
    }

    #[test]
    fn groups_must_divide_both_channel_counts() {
        let x = [Shape::new(32, 8, 8)];
        assert!(infer_output("dw", &conv(32, 3, 1, 1, 1, 32), &x).is_ok());
        let err = infer_output("g", &conv(32, 3, 1, 1, 1, 3), &x).unwrap_err();
        assert!(
            matches!(err, ModelError::BadGroups { groups: 3, .. }),
            "{err}"
        );
        let err = infer_output("g", &conv(30, 3, 1, 1, 1, 4), &x).unwrap_err();
        assert!(matches!(err, ModelError::BadGroups { .. }), "{err}");
        let err = infer_output("g", &conv(32, 3, 1, 1, 1, 0), &x).unwrap_err();
        assert!(matches!(err, ModelError::BadGroups { .. }), "{err}");
    }

    #[test]
    fn concat_sums_channels_and_checks_spatial_size() {
        let a = Shape::new(64, 28, 28);
        let b = Shape::new(128, 28, 28);
        let c = Shape::new(32, 28, 28);
        assert_eq!(
            infer_output("cat", &Op::Concat, &[a, b, c]).unwrap(),
            Shape::new(224, 28, 28)
        );
        let err = infer_output("cat", &Op::Concat, &[a, Shape::new(64, 14, 14)]).unwrap_err();
        assert!(matches!(err, ModelError::SpatialMismatch { .. }), "{err}");
    }

    #[test]
    fn add_requires_identical_shapes() {
        let a = Shape::new(64, 56, 56);
        assert_eq!(infer_output("add", &Op::Add, &[a, a]).unwrap(), a);
        let err = infer_output("add", &Op::Add, &[a, Shape::new(128, 56, 56)]).unwrap_err();
        assert_eq!(
            err,
            ModelError::ShapeMismatch {
                layer: "add".into(),
                first: a,
                other: Shape::new(128, 56, 56)
            }
        );
    }

    #[test]
    fn linear_needs_flat_input_and_flatten_provides_it() {
        let x = Shape::new(256, 6, 6);
        let lin = Op::Linear {
            out_features: 10,
            bias: true,
        };
        assert!(matches!(
            infer_output("fc", &lin, &[x]),
            Err(ModelError::NotFlat { .. })
        ));
        let flat = infer_output("flatten", &Op::Flatten, &[x]).unwrap();
        assert_eq!(flat, Shape::new(9216, 1, 1));
        assert_eq!(
            infer_output("fc", &lin, &[flat]).unwrap(),
            Shape::new(10, 1, 1)
        );
    }

    #[test]
    fn arity_is_checked() {
        let a = Shape::new(3, 4, 4);
        assert!(matches!(
            infer_output("r", &Op::Relu, &[a, a]),
            Err(ModelError::Arity { found: 2, .. })
        ));
        assert!(matches!(
            infer_output("cat", &Op::Concat, &[]),
            Err(ModelError::Arity { found: 0, .. })
        ));
    }

    #[test]
    fn pool_padding_over_half_kernel_is_refused() {
        let err = infer_output("p", &max_pool(2, 2, 2, false), &[Shape::new(3, 8, 8)]).unwrap_err();
        assert!(matches!(err, ModelError::InvalidParameter { .. }), "{err}");
    }
}

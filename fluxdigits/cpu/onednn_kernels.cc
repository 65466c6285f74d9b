// oneDNN's CPU primitives as XLA FFI targets: 2-D convolution (forward, input gradient, kernel gradient) and
// training-mode batch normalization with an optional fused ReLU (forward, backward).
// Arrays are JAX's: NHWC activations and HWIO kernels; convolutions take float32 or bfloat16. oneDNN picks its own
// kernel layout (format `any`), which is what lets it choose its fastest (blocked) kernels; kernels are reordered to
// and from HWIO per call, a small cost next to the convolution. Primitives are built once per shape and cached.
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Key = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;
enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Conv {
  dnnl::primitive conv;
  dnnl::memory::desc kernel;  // the kernel (or kernel gradient) in oneDNN's chosen layout
  dnnl::reorder kernel_reorder;  // HWIO -> chosen, or chosen -> HWIO for the kernel gradient
};

// One cache per call site; `build` runs once per key, and the entry lives as long as the process.
template <typename Value, typename K, typename Build>
const Value& Memoized(const K& key, Build build) {
  static std::mutex mutex;
  static std::map<K, std::unique_ptr<Value>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[key];
  if (!entry) entry = std::make_unique<Value>(build());
  return *entry;
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// Shapes of one convolution: input (n, h, w, c), kernel (kh, kw, c, f), output (oh, ow), stride, padding; and the
// data type of all three.
struct Shape {
  int64_t n, h, w, c, kh, kw, f, oh, ow, stride, pad_top, pad_left;
  dt type;
  dnnl::memory::dims Src() const { return {n, c, h, w}; }
  dnnl::memory::dims Kernel() const { return {f, c, kh, kw}; }
  dnnl::memory::dims Dst() const { return {n, f, oh, ow}; }
  dnnl::memory::dims Strides() const { return {stride, stride}; }
  dnnl::memory::dims PadLow() const { return {pad_top, pad_left}; }
  dnnl::memory::dims PadHigh() const {
    return {(oh - 1) * stride + kh - h - pad_top, (ow - 1) * stride + kw - w - pad_left};
  }
};

dnnl::memory::desc Plain(const dnnl::memory::dims& dims, tag t, dt type = dt::f32) {
  return dnnl::memory::desc(dims, type, t);
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Shape& s) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, Plain(s.Src(), tag::nhwc, s.type),
      Plain(s.Kernel(), tag::any, s.type), Plain(s.Dst(), tag::nhwc, s.type), s.Strides(), s.PadLow(), s.PadHigh());
}

Conv Build(Kind kind, const Shape& s) {
  auto hwio = Plain(s.Kernel(), tag::hwio, s.type);
  auto forward = ForwardDesc(s);
  if (kind == kForward) {
    auto kernel = forward.weights_desc();
    return {dnnl::convolution_forward(forward), kernel, dnnl::reorder(dnnl::memory(hwio, Engine()), dnnl::memory(kernel, Engine()))};
  }
  if (kind == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, Plain(s.Src(), tag::nhwc, s.type), Plain(s.Kernel(), tag::any, s.type),
        Plain(s.Dst(), tag::nhwc, s.type), s.Strides(), s.PadLow(), s.PadHigh(), forward);
    auto kernel = pd.weights_desc();
    return {dnnl::convolution_backward_data(pd), kernel, dnnl::reorder(dnnl::memory(hwio, Engine()), dnnl::memory(kernel, Engine()))};
  }
  auto pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, Plain(s.Src(), tag::nhwc, s.type), Plain(s.Kernel(), tag::any, s.type),
      Plain(s.Dst(), tag::nhwc, s.type), s.Strides(), s.PadLow(), s.PadHigh(), forward);
  auto kernel = pd.diff_weights_desc();
  return {dnnl::convolution_backward_weights(pd), kernel, dnnl::reorder(dnnl::memory(kernel, Engine()), dnnl::memory(hwio, Engine()))};
}

const Conv& Cached(Kind kind, const Shape& s) {
  Key key{kind, static_cast<int>(s.type), s.n, s.h, s.w, s.c, s.kh, s.kw, s.f, s.stride, s.pad_top, s.pad_left};
  return Memoized<Conv>(key, [&] { return Build(kind, s); });
}

// One oneDNN call at a time: each already runs on every core (its OpenMP team), and two at once, which XLA starts for
// independent layers, oversubscribe the cores and split the batch statistics' sums in a timing-dependent order.
std::mutex& Exclusive() {
  static std::mutex mutex;
  return mutex;
}

dnnl::stream& Stream() {
  // One stream per calling thread: XLA may run two devices' calls at once.
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// Runs `body`'s primitives alone and to completion, with oneDNN's errors returned to XLA as errors.
template <typename Body>
ffi::Error Exclusively(Body body) {
  try {
    std::lock_guard<std::mutex> exclusive(Exclusive());
    body(Stream());
    Stream().wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Run(Kind kind, const Shape& s, void* src, void* kernel_hwio, void* dst) {
  return Exclusively([&](dnnl::stream& stream) {
    const Conv& conv = Cached(kind, s);
    auto& engine = Engine();
    dnnl::memory src_mem(Plain(s.Src(), tag::nhwc, s.type), engine, src);
    dnnl::memory dst_mem(Plain(s.Dst(), tag::nhwc, s.type), engine, dst);
    dnnl::memory hwio(Plain(s.Kernel(), tag::hwio, s.type), engine, kernel_hwio);
    dnnl::memory kernel(conv.kernel, engine);  // oneDNN allocates it in its layout
    if (kind == kForward) {
      conv.kernel_reorder.execute(stream, hwio, kernel);
      conv.conv.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, kernel}, {DNNL_ARG_DST, dst_mem}});
    } else if (kind == kBackwardData) {
      conv.kernel_reorder.execute(stream, hwio, kernel);
      conv.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, src_mem}, {DNNL_ARG_WEIGHTS, kernel}, {DNNL_ARG_DIFF_DST, dst_mem}});
    } else {
      conv.conv.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_DIFF_WEIGHTS, kernel}, {DNNL_ARG_DIFF_DST, dst_mem}});
      conv.kernel_reorder.execute(stream, kernel, hwio);
    }
  });
}

Shape ShapeOf(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions k, ffi::AnyBuffer::Dimensions y,
              ffi::DataType type, int64_t stride, int64_t pad_top, int64_t pad_left) {
  return {x[0], x[1], x[2], x[3], k[0], k[1], k[3], y[1], y[2], stride, pad_top, pad_left,
          type == ffi::DataType::BF16 ? dt::bf16 : dt::f32};
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> y, int64_t stride,
                   int64_t pad_top, int64_t pad_left) {
  auto s = ShapeOf(x.dimensions(), kernel.dimensions(), y->dimensions(), x.element_type(), stride, pad_top, pad_left);
  return Run(kForward, s, x.untyped_data(), kernel.untyped_data(), y->untyped_data());
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> dx, int64_t stride,
                        int64_t pad_top, int64_t pad_left) {
  auto s = ShapeOf(dx->dimensions(), kernel.dimensions(), dy.dimensions(), dy.element_type(), stride, pad_top, pad_left);
  return Run(kBackwardData, s, dx->untyped_data(), kernel.untyped_data(), dy.untyped_data());
}

ffi::Error BackwardKernel(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dkernel, int64_t stride,
                          int64_t pad_top, int64_t pad_left) {
  auto s = ShapeOf(x.dimensions(), dkernel->dimensions(), dy.dimensions(), x.element_type(), stride, pad_top, pad_left);
  return Run(kBackwardWeights, s, x.untyped_data(), dkernel->untyped_data(), dy.untyped_data());
}

// Batch normalization of NHWC float32 over N, H and W, with scale and shift, in training mode (batch statistics).
// With `relu`, the ReLU after it runs in the same pass; oneDNN then keeps a mask in a workspace the backward reads.
using NormKey = std::tuple<int64_t, int64_t, int64_t, int64_t, bool, uint32_t>;

struct Norm {
  dnnl::batch_normalization_forward::primitive_desc forward_desc;
  dnnl::batch_normalization_forward forward;
  dnnl::batch_normalization_backward backward;
};

dnnl::normalization_flags NormFlags(bool relu) {
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  return relu ? flags | dnnl::normalization_flags::fuse_norm_relu : flags;
}

const Norm& CachedNorm(int64_t n, int64_t h, int64_t w, int64_t c, bool relu, float epsilon) {
  uint32_t epsilon_bits;
  std::memcpy(&epsilon_bits, &epsilon, sizeof epsilon);
  return Memoized<Norm>(NormKey{n, h, w, c, relu, epsilon_bits}, [&] {
    auto data = Plain({n, c, h, w}, tag::nhwc);
    auto forward = dnnl::batch_normalization_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, data, data, epsilon, NormFlags(relu));
    auto backward = dnnl::batch_normalization_backward::primitive_desc(
        Engine(), dnnl::prop_kind::backward, data, data, data, epsilon, NormFlags(relu), forward);
    return Norm{forward, dnnl::batch_normalization_forward(forward), dnnl::batch_normalization_backward(backward)};
  });
}

dnnl::memory Channels(int64_t c, float* data) { return dnnl::memory(Plain({c}, tag::a), Engine(), data); }

ffi::Error NormForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                       ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
                       ffi::ResultBuffer<ffi::F32> variance, ffi::ResultBuffer<ffi::U8> workspace, float epsilon,
                       bool relu) {
  auto d = x.dimensions();
  return Exclusively([&](dnnl::stream& stream) {
    const Norm& norm = CachedNorm(d[0], d[1], d[2], d[3], relu, epsilon);
    auto data = Plain({d[0], d[3], d[1], d[2]}, tag::nhwc);
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory(data, Engine(), x.typed_data())},
        {DNNL_ARG_DST, dnnl::memory(data, Engine(), y->typed_data())},
        {DNNL_ARG_SCALE, Channels(d[3], scale.typed_data())},
        {DNNL_ARG_SHIFT, Channels(d[3], shift.typed_data())},
        {DNNL_ARG_MEAN, Channels(d[3], mean->typed_data())},
        {DNNL_ARG_VARIANCE, Channels(d[3], variance->typed_data())}};
    if (relu) args[DNNL_ARG_WORKSPACE] = dnnl::memory(norm.forward_desc.workspace_desc(), Engine(), workspace->typed_data());
    norm.forward.execute(stream, args);
  });
}

ffi::Error NormBackward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> variance, ffi::Buffer<ffi::U8> workspace,
                        ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                        ffi::ResultBuffer<ffi::F32> dshift, float epsilon, bool relu) {
  auto d = x.dimensions();
  return Exclusively([&](dnnl::stream& stream) {
    const Norm& norm = CachedNorm(d[0], d[1], d[2], d[3], relu, epsilon);
    auto data = Plain({d[0], d[3], d[1], d[2]}, tag::nhwc);
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory(data, Engine(), x.typed_data())},
        {DNNL_ARG_DIFF_DST, dnnl::memory(data, Engine(), dy.typed_data())},
        {DNNL_ARG_DIFF_SRC, dnnl::memory(data, Engine(), dx->typed_data())},
        {DNNL_ARG_SCALE, Channels(d[3], scale.typed_data())},
        {DNNL_ARG_MEAN, Channels(d[3], mean.typed_data())},
        {DNNL_ARG_VARIANCE, Channels(d[3], variance.typed_data())},
        {DNNL_ARG_DIFF_SCALE, Channels(d[3], dscale->typed_data())},
        {DNNL_ARG_DIFF_SHIFT, Channels(d[3], dshift->typed_data())}};
    if (relu) args[DNNL_ARG_WORKSPACE] = dnnl::memory(norm.forward_desc.workspace_desc(), Engine(), workspace.typed_data());
    norm.backward.execute(stream, args);
  });
}

}  // namespace

// The workspace bytes a fused-ReLU normalization of this shape needs (Python sizes the buffer it passes), from the
// primitive the call then uses.
extern "C" int64_t fluxdigits_batch_norm_workspace_bytes(int64_t n, int64_t h, int64_t w, int64_t c, float epsilon) {
  try {
    return static_cast<int64_t>(CachedNorm(n, h, w, c, true, epsilon).forward_desc.workspace_desc().get_size());
  } catch (const dnnl::error&) {
    return -1;
  }
}

#define FLUXDIGITS_CONV_BINDING                                                                             \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()                     \
      .Attr<int64_t>("stride").Attr<int64_t>("pad_top").Attr<int64_t>("pad_left")

XLA_FFI_DEFINE_HANDLER_SYMBOL(fluxdigits_conv_forward, Forward, FLUXDIGITS_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(fluxdigits_conv_backward_data, BackwardData, FLUXDIGITS_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(fluxdigits_conv_backward_kernel, BackwardKernel, FLUXDIGITS_CONV_BINDING);

XLA_FFI_DEFINE_HANDLER_SYMBOL(fluxdigits_batch_norm_forward, NormForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<float>("epsilon").Attr<bool>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(fluxdigits_batch_norm_backward, NormBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon").Attr<bool>("relu"));

// Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX): elsewhere oneDNN emulates bf16, slower than f32.
extern "C" int fluxdigits_native_bf16() {
  auto isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_fp16 ||
         isa == dnnl::cpu_isa::avx512_core_amx || isa == dnnl::cpu_isa::avx512_core_amx_fp16;
}

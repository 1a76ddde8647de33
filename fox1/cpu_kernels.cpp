// fox1's hand-written CPU kernel: one row times an int8 matrix, in int8, with AVX512-VNNI.
//
// Decoding one token multiplies a single row x by every int8 weight matrix. Converting each weight to a float
// (what a compiled loop does) costs instructions per weight that, at large shapes, outlast the memory delivering
// the weights; here x is
// rounded to int8 once (one scale for the row, as `fox1.speed.int8_matmul` rounds a prompt's rows), and
// `vpdpbusd` multiplies 64 int8 pairs and adds them into 16 int32 sums in one instruction, as llama.cpp's Q8_0
// kernel does. Built and loaded by fox1/cpu_kernels.py; registered as the operator `fox1::int8_row_linear`.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t kLanes = 64;  // int8 values in one 512-bit register

// vpdpbusd multiplies unsigned by signed bytes, so x enters as |x| and its signs move onto the weights:
// |x_k| * (sign(x_k) * w_k) = x_k * w_k. No weight is -128 (quantize_rows_int8 clamps to +-127), so negating one is exact.
inline __m512i dot_add(__m512i sum, __m512i magnitude, __mmask64 negative, __m512i weights) {
  return _mm512_dpbusd_epi32(sum, magnitude, _mm512_mask_sub_epi8(weights, negative, _mm512_setzero_si512(), weights));
}

// The int32 dot product of the int8 row (magnitudes, sign masks) with one weight row w, read start to end: the
// hardware prefetcher follows one row at a time (interleaving four rows read DRAM at half the speed).
inline int32_t dot_row(const uint8_t* magnitude, const __mmask64* negative, const int8_t* w, int64_t K) {
  __m512i sum = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += kLanes) {
    const __mmask64 valid = K - k >= kLanes ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
    sum = dot_add(sum, _mm512_maskz_loadu_epi8(valid, magnitude + k), negative[k / kLanes],
                  _mm512_maskz_loadu_epi8(valid, w + k));
  }
  return _mm512_reduce_add_epi32(sum);
}

// y = x @ (weight * scale[:, None]).T for one fp32 row x (any leading shape of one row), int8 weight (N, K),
// fp32 scale (N,); x is rounded to int8 with one scale, max|x| / 127.
at::Tensor int8_row_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat,
              "int8_row_linear: fp32 x, int8 weight, fp32 scale");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(x.numel() == K && weight.is_contiguous() && scale.numel() == N, "int8_row_linear: shapes");
  const at::Tensor row = x.contiguous();
  const float* xs = row.data_ptr<float>();

  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  float largest = 0.f;
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) {
    largest = std::max(largest, std::fabs(xs[k]));
    finite = finite && std::isfinite(xs[k]);
  }
  if (!finite) return at::full(sizes, NAN, x.options());  // as int8_matmul: a broken row must not look like numbers
  const float step = std::max(largest, FLT_MIN) / 127.f;
  std::vector<uint8_t> magnitude(K);
  std::vector<__mmask64> negative((K + kLanes - 1) / kLanes, 0);
  for (int64_t k = 0; k < K; ++k) {
    const float q = std::nearbyint(xs[k] / step);  // round half to even, as torch.round
    magnitude[k] = static_cast<uint8_t>(std::fabs(q));
    if (q < 0) negative[k / kLanes] |= __mmask64(1) << (k % kLanes);
  }

  at::Tensor y = at::empty(sizes, x.options());
  float* ys = y.data_ptr<float>();
  const int8_t* ws = weight.data_ptr<int8_t>();
  const at::Tensor scales = scale.contiguous();  // held: a temporary's pointer would dangle
  const float* ss = scales.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      ys[n] = static_cast<float>(dot_row(magnitude.data(), negative.data(), ws + n * K, K)) * step * ss[n];
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(fox1, m) { m.def("int8_row_linear(Tensor x, Tensor weight, Tensor scale) -> Tensor"); }

TORCH_LIBRARY_IMPL(fox1, CPU, m) { m.impl("int8_row_linear", int8_row_linear); }

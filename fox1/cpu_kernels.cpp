// fox1's hand-written CPU kernels for a decode step: one row times an int8 or an int4 matrix, in int8, with
// AVX512-VNNI; and attention of one query row over the KV cache (`one_query_attention`, at the end). One more serves
// a prompt: int4 weights made int8 rows (`int4_as_int8_rows`).
//
// Decoding one token multiplies a single row x by every weight matrix. Converting each weight to a float (what a
// compiled loop does) costs instructions per weight that, at large shapes, outlast the memory delivering the
// weights; here x is rounded to int8 once (one scale for the row, as `fox1.speed.int8_matmul` rounds a prompt's
// rows), and `vpdpbusd` multiplies 64 int8 pairs and adds them into 16 int32 sums in one instruction, as
// llama.cpp's Q8_0 and Q4_0 kernels do. Built and loaded by fox1/cpu_kernels.py; registered as the operators
// `fox1::int8_row_linear`, `fox1::int4_row_linear`, `fox1::int4_as_int8_rows` and `fox1::one_query_attention`.
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

// A mask of the first n lanes of a register (all of them from n = the mask's width on, none below 1).
template <typename Mask>
inline Mask first_lanes(int64_t n) {
  const int64_t width = 8 * sizeof(Mask);
  return n >= width ? static_cast<Mask>(~Mask(0)) : n <= 0 ? Mask(0) : static_cast<Mask>((Mask(1) << n) - 1);
}

// x rounded to int8 with one scale, max|x| / 127, round half to even (as torch.round).
struct RoundedRow {
  float step = 0.f;
  bool finite = true;
  std::vector<int8_t> q;

  RoundedRow(const float* xs, int64_t K) : q(K) {
    float largest = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      largest = std::max(largest, std::fabs(xs[k]));
      finite = finite && std::isfinite(xs[k]);
    }
    step = std::max(largest, FLT_MIN) / 127.f;
    for (int64_t k = 0; k < K; ++k) q[k] = static_cast<int8_t>(std::nearbyint(xs[k] / step));
  }
};

// The int8 kernel's form of the row. vpdpbusd multiplies unsigned by signed bytes, so the row is kept as |q| and,
// per 64 values, a mask of the negative ones, whose signs move onto the weights: |q_k| * (sign(q_k) * w_k) = q_k * w_k.
struct SignSplitRow {
  std::vector<uint8_t> magnitude;
  std::vector<__mmask64> negative;

  explicit SignSplitRow(const std::vector<int8_t>& q)
      : magnitude((q.size() + kLanes - 1) / kLanes * kLanes, 0), negative((q.size() + kLanes - 1) / kLanes, 0) {
    for (size_t k = 0; k < q.size(); ++k) {
      magnitude[k] = static_cast<uint8_t>(std::abs(q[k]));
      if (q[k] < 0) negative[k / kLanes] |= __mmask64(1) << (k % kLanes);
    }
  }
};

// The int32 dot product of the row with one int8 weight row w, read start to end: the hardware prefetcher follows
// one row at a time (interleaving four rows read DRAM at half the speed). No weight is -128 (quantize_rows_int8
// clamps to +-127), so negating one is exact.
inline int32_t int8_dot(const SignSplitRow& x, const int8_t* w, int64_t K) {
  __m512i sum = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += kLanes) {
    const __m512i weights = _mm512_maskz_loadu_epi8(first_lanes<__mmask64>(K - k), w + k);
    const __m512i signed_weights =
        _mm512_mask_sub_epi8(weights, x.negative[k / kLanes], _mm512_setzero_si512(), weights);
    sum = _mm512_dpbusd_epi32(sum, _mm512_loadu_si512(x.magnitude.data() + k), signed_weights);
  }
  return _mm512_reduce_add_epi32(sum);
}

// int4 weights arrive 128 to 64 bytes (column 2j in the low half of byte j, stored as w + 8): the low halves are the
// block's 64 even columns, the high halves its 64 odd ones. The row is laid out to match (per 128 columns: evens,
// then odds), so the stored nibbles w + 8 (unsigned) multiply q (signed) as they are, and each of the 16 int32 sums
// starts at -8 * (its four q's of each half), which takes the 8s back out. Sum s covers columns of group s / 4 of the
// block, in both halves, so one scale vector serves the whole block.
constexpr int64_t kBlock = 128;

struct Int4Row {
  std::vector<int8_t> values;
  std::vector<int32_t> start;

  explicit Int4Row(const std::vector<int8_t>& q)
      : values((q.size() + kBlock - 1) / kBlock * kBlock, 0), start((q.size() + kBlock - 1) / kBlock * 16, 0) {
    for (size_t k = 0; k < q.size(); ++k) {
      const size_t block = k / kBlock, j = k % kBlock, slot = j % 2 * kLanes + j / 2;
      values[block * kBlock + slot] = q[k];
      start[block * 16 + slot % kLanes / 4] -= 8 * q[k];
    }
  }
};

// The scales of four groups of 32, fp32 or bf16 (fp32's upper half), absent ones 0.
inline __m128 four_scales(const float* s, __mmask8 present) { return _mm_maskz_loadu_ps(present, s); }
inline __m128 four_scales(const at::BFloat16* s, __mmask8 present) {
  return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(_mm_maskz_loadu_epi16(present, s)), 16));
}

// One block of `columns` (128, or fewer at a row's end) of the row times int4 weights, added into sum.
template <typename Scale>
inline __m512 int4_block(__m512 sum, const Int4Row& x, const uint8_t* packed, const Scale* scale, int64_t k,
                         int64_t columns) {
  const __m512i low_half = _mm512_set1_epi8(0x0F);
  const __m512i group_of_sum = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i bytes = _mm512_maskz_loadu_epi8(first_lanes<__mmask64>(columns / 2), packed + k / 2);
  const int8_t* values = x.values.data() + k;
  __m512i products = _mm512_loadu_si512(x.start.data() + k / kBlock * 16);
  products = _mm512_dpbusd_epi32(products, _mm512_and_si512(bytes, low_half), _mm512_loadu_si512(values));
  products = _mm512_dpbusd_epi32(products, _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low_half),
                                 _mm512_loadu_si512(values + kLanes));
  const __m128 scales = four_scales(scale + k / 32, first_lanes<__mmask8>(columns / 32));
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(products),
                         _mm512_permutexvar_ps(group_of_sum, _mm512_castps128_ps512(scales)), sum);
}

// The dot product of the row with one int4 weight row: packed (K / 2 bytes), one scale per 32 columns. Two sums
// take alternate blocks, so one block's multiply-add need not wait for the last's.
template <typename Scale>
inline float int4_dot(const Int4Row& x, const uint8_t* packed, const Scale* scale, int64_t K) {
  __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 2 * kBlock <= K; k += 2 * kBlock) {
    even = int4_block(even, x, packed, scale, k, kBlock);
    odd = int4_block(odd, x, packed, scale, k + kBlock, kBlock);
  }
  for (; k < K; k += kBlock) even = int4_block(even, x, packed, scale, k, std::min(kBlock, K - k));
  return _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
}

// One row x (any leading shape) times N weight rows, y[n] = dot(n), threads splitting the rows.
template <typename Dot>
at::Tensor row_times_rows(const at::Tensor& x, int64_t N, const RoundedRow& row, Dot dot) {
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  if (!row.finite) return at::full(sizes, NAN, x.options());  // as int8_matmul: a broken row must not look like numbers
  at::Tensor y = at::empty(sizes, x.options());
  float* ys = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) ys[n] = dot(n);
  });
  return y;
}

// y = x @ (weight * scale[:, None]).T for one fp32 row x, int8 weight (N, K), fp32 scale (N,).
at::Tensor int8_row_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat,
              "int8_row_linear: fp32 x, int8 weight, fp32 scale");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(x.numel() == K && weight.is_contiguous() && scale.numel() == N, "int8_row_linear: shapes");
  const at::Tensor xs = x.contiguous(), scales = scale.contiguous();  // held: a temporary's pointer would dangle
  const RoundedRow row(xs.data_ptr<float>(), K);
  const SignSplitRow split(row.q);
  const int8_t* w = weight.data_ptr<int8_t>();
  const float* s = scales.data_ptr<float>();
  return row_times_rows(x, N, row, [&](int64_t n) {  // scaled in int8_matmul's order, so the two agree bit for bit
    return static_cast<float>(int8_dot(split, w + n * K, K)) * row.step * s[n];
  });
}

// y = x @ W.T for one fp32 row x, rounded to int8 as above, and int4 weights W (`fox1.speed.quantize_groups_int4`):
// packed uint8 (N, K / 2), scale (N, K / 32) in fp32 or bf16. Like llama.cpp's Q4_0 x Q8_0 products, with one
// scale for the whole row instead of one per 32.
at::Tensor int4_row_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && packed.scalar_type() == at::kByte &&
              (scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kBFloat16),
              "int4_row_linear: fp32 x, uint8 packed weights, fp32 or bf16 scales");
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  TORCH_CHECK(x.numel() == K && K % 32 == 0 && packed.is_contiguous() && scale.is_contiguous() &&
              scale.size(0) == N && scale.size(1) == K / 32, "int4_row_linear: shapes");
  const at::Tensor xs = x.contiguous();
  const RoundedRow row(xs.data_ptr<float>(), K);
  const Int4Row laid_out(row.q);
  const uint8_t* w = packed.data_ptr<uint8_t>();
  const auto times_rows = [&](const auto* s) {  // s: fp32 or bf16 scales
    return row_times_rows(x, N, row, [&](int64_t n) {
      return int4_dot(laid_out, w + n * K / 2, s + n * K / 32, K) * row.step;
    });
  };
  return scale.scalar_type() == at::kFloat ? times_rows(scale.data_ptr<float>())
                                           : times_rows(scale.data_ptr<at::BFloat16>());
}

// A prompt's int4 weights as int8 rows for `fox1.speed.int8_matmul` (`fox1.speed.requantize_int4_rows`, whose
// arithmetic this repeats bit for bit): row scale = 8/127 of the largest magnitude of the row's group scales (a scale
// is negative where its group's extreme weight is positive), and each stored value v (-8..7) of group g becomes
// round(v * (s_g / row scale)). A group has only 16 values, so they are worked out once (16 lanes) and looked up for
// its 32 nibbles with vpshufb, instead of multiplying and rounding every weight.
template <typename Scale>
void int4_rows_as_int8(const uint8_t* packed, const Scale* scale, int64_t N, int64_t K, int8_t* rows,
                       float* row_scales) {
  const __m512 values = _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8);
  const __m128i low_half = _mm_set1_epi8(0x0F);
  const int64_t G = K / 32;
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float largest = 0.f;
      for (int64_t g = 0; g < G; ++g) largest = std::max(largest, std::fabs(static_cast<float>(scale[n * G + g])));
      const float row_scale = std::max(largest * 8.f / 127.f, FLT_MIN);
      row_scales[n] = row_scale;
      for (int64_t g = 0; g < G; ++g) {
        const __m512 scaled = _mm512_mul_ps(values, _mm512_set1_ps(static_cast<float>(scale[n * G + g]) / row_scale));
        __m512i q = _mm512_cvt_roundps_epi32(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
        const __m128i table = _mm512_cvtepi32_epi8(q);
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + n * K / 2 + g * 16));
        const __m128i even = _mm_shuffle_epi8(table, _mm_and_si128(bytes, low_half));  // low nibbles: even columns
        const __m128i odd = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(bytes, 4), low_half));
        int8_t* out = rows + n * K + g * 32;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi8(even, odd));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_unpackhi_epi8(even, odd));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> int4_as_int8_rows(const at::Tensor& packed, const at::Tensor& scale) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && (scale.scalar_type() == at::kFloat ||
              scale.scalar_type() == at::kBFloat16), "int4_as_int8_rows: uint8 packed weights, fp32 or bf16 scales");
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  TORCH_CHECK(K % 32 == 0 && packed.is_contiguous() && scale.is_contiguous() && scale.size(0) == N &&
              scale.size(1) == K / 32, "int4_as_int8_rows: shapes");
  at::Tensor rows = at::empty({N, K}, packed.options().dtype(at::kChar));
  at::Tensor row_scales = at::empty({N}, scale.options().dtype(at::kFloat));
  const uint8_t* w = packed.data_ptr<uint8_t>();
  if (scale.scalar_type() == at::kFloat)
    int4_rows_as_int8(w, scale.data_ptr<float>(), N, K, rows.data_ptr<int8_t>(), row_scales.data_ptr<float>());
  else
    int4_rows_as_int8(w, scale.data_ptr<at::BFloat16>(), N, K, rows.data_ptr<int8_t>(), row_scales.data_ptr<float>());
  return {rows, row_scales};
}

// e^x for x <= 0, to about fp32's precision: 2^n * e^r with n = round(x / ln 2), |r| <= ln(2) / 2, e^r by its
// Taylor series to r^6 (the first term left out is below 1.2e-7), 2^n by vscalefps; below -100, 0 or nearly.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-100.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln 2 in two parts, so r stays exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 series = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 1.f / 2, 1.f, 1.f})
    series = _mm512_fmadd_ps(series, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(series, n);
}

// The lanes of a head's 16 dimensions starting at chunk * 16 that exist (all 16 but at the end of a head).
inline __mmask16 dimensions(int64_t chunk, int64_t D) { return first_lanes<__mmask16>(D - chunk * 16); }

// Lane i of the result: the sum of the 16 lanes of v[i] (a transpose-and-add tree, not 16 separate reductions).
inline __m512 sum_each(const __m512* v) {
  __m512 quads[4];  // quads[n], 128-bit lane l: lane l's partial sums of v[4n .. 4n+3]
  for (int n = 0; n < 4; ++n) {
    __m512 pairs[2];
    for (int m = 0; m < 2; ++m) {
      const __m512 a = v[4 * n + 2 * m], b = v[4 * n + 2 * m + 1];
      pairs[m] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    quads[n] = _mm512_add_ps(_mm512_shuffle_ps(pairs[0], pairs[1], 0x44), _mm512_shuffle_ps(pairs[0], pairs[1], 0xEE));
  }
  const __m512 low = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x88),
                                   _mm512_shuffle_f32x4(quads[0], quads[1], 0xDD));
  const __m512 high = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x88),
                                    _mm512_shuffle_f32x4(quads[2], quads[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, 0x88), _mm512_shuffle_f32x4(low, high, 0xDD));
}

// scores[g * seen + j] = (query g . key row keys[j]) * scale, for the G query heads that share these keys (GQA),
// 16 keys at a time: each 16 dimensions of a query meet the same 16 dimensions of all 16 keys, so the 16 sums stay
// in registers, and the 16 key rows stay in the L1 cache while every query of the group reads them. Past the last
// key, the last key is read again and its score not stored.
inline void score(const float* queries, int64_t G, const float* key, const int64_t* keys, int64_t seen, int64_t D,
                  float scale, float* scores) {
  for (int64_t j0 = 0; j0 < seen; j0 += 16) {
    const float* rows[16];
    for (int64_t j = 0; j < 16; ++j) rows[j] = key + keys[std::min(j0 + j, seen - 1)] * D;
    for (int64_t g = 0; g < G; ++g) {
      __m512 dots[16];
      for (int64_t j = 0; j < 16; ++j) dots[j] = _mm512_setzero_ps();
      for (int64_t c = 0; c * 16 < D; ++c) {
        const __mmask16 lanes = dimensions(c, D);
        const __m512 query_part = _mm512_maskz_loadu_ps(lanes, queries + g * D + c * 16);
#pragma GCC unroll 16
        for (int64_t j = 0; j < 16; ++j)
          dots[j] = _mm512_fmadd_ps(query_part, _mm512_maskz_loadu_ps(lanes, rows[j] + c * 16), dots[j]);
      }
      const __m512 scaled = _mm512_mul_ps(sum_each(dots), _mm512_set1_ps(scale));
      _mm512_mask_storeu_ps(scores + g * seen + j0, first_lanes<__mmask16>(seen - j0), scaled);
    }
  }
}

// The softmax of scores[0 .. seen) in place: each less the largest (so every exponent is <= 0), e^, normalised.
inline void softmax(float* scores, int64_t seen) {
  const auto real = [seen](int64_t j) { return first_lanes<__mmask16>(seen - j); };
  __m512 largest = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < seen; j += 16)
    largest = _mm512_mask_max_ps(largest, real(j), largest, _mm512_loadu_ps(scores + j));
  const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(largest));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < seen; j += 16) {
    const __m512 e = _mm512_maskz_mov_ps(real(j), exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + j), shift)));
    _mm512_mask_storeu_ps(scores + j, real(j), e);
    total = _mm512_add_ps(total, e);
  }
  const __m512 normaliser = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(total));
  for (int64_t j = 0; j < seen; j += 16)
    _mm512_mask_storeu_ps(scores + j, real(j), _mm512_mul_ps(_mm512_loadu_ps(scores + j), normaliser));
}

// out[g] = sum over j of weights[g * seen + j] * value row keys[j], for the G query heads of a group: 64
// dimensions (four 16-wide sums) and 16 keys at a time, every query of the group reading those 16 value rows while
// they are in the L1 cache.
inline void weighted_sum(const float* weights, int64_t G, const float* value, const int64_t* keys, int64_t seen,
                         int64_t D, float* out) {
  for (int64_t c0 = 0; c0 * 16 < D; c0 += 4) {
    for (int64_t j0 = 0; j0 < seen; j0 += 16) {
      for (int64_t g = 0; g < G; ++g) {
        __m512 sums[4];
        float* part = out + g * D + c0 * 16;  // its 64 dimensions, summed over the keys before j0
        for (int64_t c = 0; c < 4; ++c)
          sums[c] = j0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(dimensions(c0 + c, D), part + c * 16);
        for (int64_t j = j0; j < std::min(j0 + 16, seen); ++j) {
          const __m512 weight = _mm512_set1_ps(weights[g * seen + j]);
          const float* row = value + keys[j] * D + c0 * 16;
          for (int64_t c = 0; c < 4; ++c)
            sums[c] = _mm512_fmadd_ps(weight, _mm512_maskz_loadu_ps(dimensions(c0 + c, D), row + c * 16), sums[c]);
        }
        for (int64_t c = 0; c < 4; ++c) _mm512_mask_storeu_ps(part + c * 16, dimensions(c0 + c, D), sums[c]);
      }
    }
  }
}

// Attention of one query row per head over a KV cache (a decode step): q (B, H, 1, D), k and v (B, Hkv, L, D), all
// fp32 (`fox1.speed.cache_dtype`), mask (L,) bool, the same for every row and head; query head h reads key/value
// head h / (H / Hkv). Keys the mask hides are skipped, not scored, so a long static cache costs only what is
// written. PyTorch's CPU SDPA computes the same in fp32 over every slot, with more fixed cost a call (NOTES.md).
at::Tensor one_query_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
              mask.scalar_type() == at::kBool, "one_query_attention: fp32 q, k, v and a bool mask");
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && k.dim() == 4 && k.sizes() == v.sizes() && k.size(0) == q.size(0) &&
              k.size(3) == q.size(3) && q.size(1) % k.size(1) == 0 && mask.numel() == k.size(2),
              "one_query_attention: shapes");
  const int64_t H = q.size(1), D = q.size(3), Hkv = k.size(1), L = k.size(2);
  const at::Tensor qs = q.contiguous(), ks = k.contiguous(), vs = v.contiguous(), ms = mask.contiguous();
  const bool* visible = ms.data_ptr<bool>();
  std::vector<int64_t> keys;
  for (int64_t j = 0; j < L; ++j)
    if (visible[j]) keys.push_back(j);
  at::Tensor y = at::empty_like(qs);
  if (keys.empty()) return y.fill_(NAN);  // a query that may see nothing has no answer
  const int64_t seen = static_cast<int64_t>(keys.size());
  const int64_t G = H / Hkv;  // query heads per key/value head, handled together
  at::parallel_for(0, q.size(0) * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> weights(G * seen);
    for (int64_t i = begin; i < end; ++i) {  // i: (row, key/value head); its queries are heads i * G .. i * G + G - 1
      score(qs.data_ptr<float>() + i * G * D, G, ks.data_ptr<float>() + i * L * D, keys.data(), seen, D,
            1.f / std::sqrt(static_cast<float>(D)), weights.data());
      for (int64_t g = 0; g < G; ++g) softmax(weights.data() + g * seen, seen);
      weighted_sum(weights.data(), G, vs.data_ptr<float>() + i * L * D, keys.data(), seen, D,
                   y.data_ptr<float>() + i * G * D);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(fox1, m) {
  m.def("int8_row_linear(Tensor x, Tensor weight, Tensor scale) -> Tensor");
  m.def("int4_row_linear(Tensor x, Tensor packed, Tensor scale) -> Tensor");
  m.def("int4_as_int8_rows(Tensor packed, Tensor scale) -> (Tensor, Tensor)");
  m.def("one_query_attention(Tensor q, Tensor k, Tensor v, Tensor mask) -> Tensor");
}

TORCH_LIBRARY_IMPL(fox1, CPU, m) {
  m.impl("int8_row_linear", int8_row_linear);
  m.impl("int4_row_linear", int4_row_linear);
  m.impl("int4_as_int8_rows", int4_as_int8_rows);
  m.impl("one_query_attention", one_query_attention);
}

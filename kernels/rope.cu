// Rotary position embedding, NORM pairing (llama.cpp's LLAMA_ROPE_TYPE_NORM): within each
// head, the pairs (x[2i], x[2i+1]) with 2i < n_rot turn by
// pos * freq_scale * freq_base^(-2i / n_rot) / freq_factors[i]; the other values stay.
// The angle is computed in double, as the CPU backend does, so both round alike even at long
// positions; the rotation itself is f32.
#include "common.cuh"

// x: [n_tokens][n_heads * head_dim], rotated in place; pos: [n_tokens]; freq_factors:
// [n_rot / 2] or null. grid (n_tokens, n_heads); any block size.
extern "C" __global__ void rope_norm(float* __restrict__ x, const int* __restrict__ pos, int n_heads, int head_dim,
                                     int n_rot, float freq_base, float freq_scale,
                                     const float* __restrict__ freq_factors) {
    float* h = x + ((long long)blockIdx.x * n_heads + blockIdx.y) * head_dim;
    const double p = double(pos[blockIdx.x]) * double(freq_scale);
    for (int i = threadIdx.x; i < n_rot / 2; i += blockDim.x) {
        double theta = p * pow(double(freq_base), -2.0 * double(i) / double(n_rot));
        if (freq_factors) theta /= double(freq_factors[i]);
        const float c = float(cos(theta)), s = float(sin(theta));
        const float a = h[2 * i], b = h[2 * i + 1];
        h[2 * i] = a * c - b * s;
        h[2 * i + 1] = a * s + b * c;
    }
}

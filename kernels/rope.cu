// Rotary position embedding, NORM pairing (llama): within each head, element pairs
// (2i, 2i+1) for 2i < n_dims turn by pos * freq_base^(-2i / n_dims); the rest stay.
#include "common.cuh"

// x: [n_tokens][n_heads][head_dim], rotated in place; pos: [n_tokens].
// grid (n_tokens, n_heads); any block size.
extern "C" __global__ void rope_norm(float* __restrict__ x, const int* __restrict__ pos, int n_heads,
                                     int head_dim, int n_dims, float freq_base) {
    float* h = x + ((long long)blockIdx.x * n_heads + blockIdx.y) * head_dim;
    const float p = float(pos[blockIdx.x]);
    for (int i = threadIdx.x; i < n_dims / 2; i += blockDim.x) {
        const float theta = p * powf(freq_base, -2.0f * float(i) / float(n_dims));
        const float c = cosf(theta), s = sinf(theta);
        const float a = h[2 * i], b = h[2 * i + 1];
        h[2 * i] = a * c - b * s;
        h[2 * i + 1] = a * s + b * c;
    }
}

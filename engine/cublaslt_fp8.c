/* The fp8 dense Linear with cuBLASLt's epilogue (engine/fp8_epilogue.py builds and loads this).
 *
 * torch._scaled_mm takes a bias but no activation and writes no fp8, so fp8 dense runs GELU and the cast
 * to fp8 for the next Linear as kernels of their own, while the int8 2:4 model has both in its epilogue.
 * cuBLASLt has them for fp8 matmuls: twofour_fp8_plan_init makes the descriptors and picks the heuristic's
 * algorithm once per (shape, epilogue, output type, scales, bias), twofour_fp8_matmul runs it on a stream.
 * Layout: out (tokens x n, row-major) = x (tokens x k, row-major) @ W.t() (W: n x k, row-major), which
 * cuBLASLt, column-major, sees as D (n x tokens) = op(A) @ B with A = W read transposed ("TN", the layout
 * its fp8 kernels require) and B = x. Plain C against cublasLt.h: memory and streams stay torch's. */
#include <stdint.h>
#include <stdlib.h>
#include <cublasLt.h>

/* compiled as C++ (cublasLt.h includes cuda_fp16.h, which C cannot read): the two entry points keep C names */
#ifdef __cplusplus
#define TWOFOUR_EXPORT extern "C"
#else
#define TWOFOUR_EXPORT
#endif

typedef struct {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t weight, input, c_layout, out;
    cublasLtMatmulAlgo_t algo;
    size_t workspace;
    int fp8_out;
} twofour_fp8_entry;

static cublasLtHandle_t handle;
static int handle_ready = 0;
static const float one = 1.0f, zero = 0.0f;

/* each step only while all before it succeeded: the first failure's status is the one returned */
#define STEP(call) do { if (status == CUBLAS_STATUS_SUCCESS) status = (call); } while (0)

static cublasStatus_t set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, const void* value,
                          size_t size) {
    return cublasLtMatmulDescSetAttribute(desc, attribute, value, size);
}

/* A plan for out = epilogue(x @ W.t() * (*x_scale) * (*w_scale) + bias), then, with fp8_out, scaled by
 * *out_scale and written as e4m3 (else fp16); epilogue GELU (tanh form) where gelu, else the bias alone.
 * Scales are device pointers to one float each, bias a device fp16 vector of n: all read at every call.
 * *entry and *workspace_size out. Returns a cublasStatus_t (CUBLAS_STATUS_NOT_SUPPORTED: no algorithm). */
TWOFOUR_EXPORT int twofour_fp8_plan_init(int64_t n, int64_t tokens, int64_t k, int32_t gelu, int32_t fp8_out,
                                         const float* x_scale, const float* w_scale, const float* out_scale,
                                         const void* bias, size_t max_workspace, void** entry, size_t* workspace_size) {
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    if (!handle_ready) {
        STEP(cublasLtCreate(&handle));
        if (status != CUBLAS_STATUS_SUCCESS) return (int) status;
        handle_ready = 1;
    }
    twofour_fp8_entry* made = (twofour_fp8_entry*) calloc(1, sizeof(twofour_fp8_entry));
    if (made == NULL) return (int) CUBLAS_STATUS_ALLOC_FAILED;
    cublasOperation_t transposed = CUBLAS_OP_T, plain = CUBLAS_OP_N;
    cublasLtEpilogue_t epilogue = gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    cudaDataType_t half = CUDA_R_16F, out_type = fp8_out ? CUDA_R_8F_E4M3 : CUDA_R_16F;
    int8_t fast_accumulation = 1;
    cublasLtMatmulPreference_t preference = NULL;
    cublasLtMatmulHeuristicResult_t found;
    int count = 0;
    STEP(cublasLtMatmulDescCreate(&made->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    STEP(set(made->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transposed, sizeof(transposed)));
    STEP(set(made->desc, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof(plain)));
    STEP(set(made->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof(w_scale)));
    STEP(set(made->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof(x_scale)));
    if (fp8_out) STEP(set(made->desc, CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &out_scale, sizeof(out_scale)));
    STEP(set(made->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accumulation, sizeof(fast_accumulation)));
    STEP(set(made->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    STEP(set(made->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    STEP(set(made->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &half, sizeof(half)));
    STEP(cublasLtMatrixLayoutCreate(&made->weight, CUDA_R_8F_E4M3, k, n, k));
    STEP(cublasLtMatrixLayoutCreate(&made->input, CUDA_R_8F_E4M3, k, tokens, k));
    /* C is not read (beta 0); an fp8 D takes a C layout of the bias's type and no C pointer (D's own
     * pointer under another layout would read as an in-place call with layouts that differ) */
    STEP(cublasLtMatrixLayoutCreate(&made->c_layout, CUDA_R_16F, n, tokens, n));
    STEP(cublasLtMatrixLayoutCreate(&made->out, out_type, n, tokens, n));
    STEP(cublasLtMatmulPreferenceCreate(&preference));
    STEP(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
                                              sizeof(max_workspace)));
    STEP(cublasLtMatmulAlgoGetHeuristic(handle, made->desc, made->weight, made->input, made->c_layout, made->out,
                                        preference, 1, &found, &count));
    if (status == CUBLAS_STATUS_SUCCESS && count == 0) status = CUBLAS_STATUS_NOT_SUPPORTED;
    if (preference != NULL) cublasLtMatmulPreferenceDestroy(preference);
    if (status != CUBLAS_STATUS_SUCCESS) {
        if (made->out != NULL) cublasLtMatrixLayoutDestroy(made->out);
        if (made->c_layout != NULL) cublasLtMatrixLayoutDestroy(made->c_layout);
        if (made->input != NULL) cublasLtMatrixLayoutDestroy(made->input);
        if (made->weight != NULL) cublasLtMatrixLayoutDestroy(made->weight);
        if (made->desc != NULL) cublasLtMatmulDescDestroy(made->desc);
        free(made);
        return (int) status;
    }
    made->algo = found.algo;
    made->workspace = found.workspaceSize;
    made->fp8_out = fp8_out;
    *entry = made;
    *workspace_size = found.workspaceSize;
    return 0;
}

/* out = the plan's matmul of weight (n x k fp8, row-major) and x (tokens x k fp8, row-major), on `stream`. */
TWOFOUR_EXPORT int twofour_fp8_matmul(void* entry, const void* weight, const void* x, void* out, void* workspace,
                                      void* stream) {
    twofour_fp8_entry* made = (twofour_fp8_entry*) entry;
    const void* c = made->fp8_out ? NULL : out;
    return (int) cublasLtMatmul(handle, made->desc, &one, weight, made->weight, x, made->input, &zero, c,
                                made->c_layout, out, made->out, &made->algo, workspace, made->workspace,
                                (cudaStream_t) stream);
}

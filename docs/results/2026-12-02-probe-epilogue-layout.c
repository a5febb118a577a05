/* Probe (issue #18): which cuSPARSELt operand layouts accept an activation epilogue (GELU, ReLU).
 * The engine's layout (sparse weight as A, tokens as B transposed, column-major D = the (tokens, out)
 * row-major result) planned no GELU on the H200 ("invalid value", 0.8 and 0.10). Layout 1 puts the
 * tokens in A and the 2:4 weight in B (transposed), every matrix row-major: D is (tokens, out).
 * probe_plan reports the first step that fails; probe_run compresses the weight for that layout and
 * runs `iters` matmuls on the stream given. Built and driven by 2026-12-02-probe-epilogue-layout.py. */
#include <stdalign.h>
#include <stdint.h>
#include <cusparseLt.h>

static cusparseLtHandle_t handle;
static int ready = 0;
static cusparseLtMatDescriptor_t sparse, dense, result;
static cusparseLtMatmulDescriptor_t matmul;
static cusparseLtMatmulAlgSelection_t selection;
static cusparseLtMatmulPlan_t plan;
static int sparse_b_now = 0;

#define STEP(n, call) do { cusparseStatus_t s_ = (call); if (s_ != CUSPARSE_STATUS_SUCCESS) { *step = (n); return (int) s_; } } while (0)

/* m: out features, n: tokens, k: in features. dtype 0 fp16, 2 int8 (fp16 out, per-row alpha).
 * act 0 none, 1 relu, 2 gelu. layout 0: the engine's; 1: tokens as A, weight as B. */
int probe_plan(int layout, int dtype, int act, const void* bias, int64_t m, int64_t n, int64_t k, int32_t alg,
               int* step) {
    if (!ready) { STEP(1, cusparseLtInit(&handle)); ready = 1; }
    cudaDataType in = dtype == 2 ? CUDA_R_8I : CUDA_R_16F;
    cusparseComputeType compute = dtype == 2 ? CUSPARSE_COMPUTE_32I : CUSPARSE_COMPUTE_32F;
    int one = 1;
    sparse_b_now = layout == 1;
    if (layout == 0) {
        STEP(2, cusparseLtStructuredDescriptorInit(&handle, &sparse, m, k, k, 16, in, CUSPARSE_ORDER_ROW,
                                                   CUSPARSELT_SPARSITY_50_PERCENT));
        STEP(3, cusparseLtDenseDescriptorInit(&handle, &dense, n, k, k, 16, in, CUSPARSE_ORDER_ROW));
        STEP(4, cusparseLtDenseDescriptorInit(&handle, &result, m, n, m, 16, CUDA_R_16F, CUSPARSE_ORDER_COL));
        STEP(5, cusparseLtMatmulDescriptorInit(&handle, &matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                               CUSPARSE_OPERATION_TRANSPOSE, &sparse, &dense, &result, &result,
                                               compute));
    } else {
        STEP(3, cusparseLtDenseDescriptorInit(&handle, &dense, n, k, k, 16, in, CUSPARSE_ORDER_ROW));
        STEP(2, cusparseLtStructuredDescriptorInit(&handle, &sparse, m, k, k, 16, in, CUSPARSE_ORDER_ROW,
                                                   CUSPARSELT_SPARSITY_50_PERCENT));
        STEP(4, cusparseLtDenseDescriptorInit(&handle, &result, n, m, m, 16, CUDA_R_16F, CUSPARSE_ORDER_ROW));
        STEP(5, cusparseLtMatmulDescriptorInit(&handle, &matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                               CUSPARSE_OPERATION_TRANSPOSE, &dense, &sparse, &result, &result,
                                               compute));
    }
    if (act == 1) STEP(6, cusparseLtMatmulDescSetAttribute(&handle, &matmul, CUSPARSELT_MATMUL_ACTIVATION_RELU, &one, sizeof(one)));
    if (act == 2) STEP(6, cusparseLtMatmulDescSetAttribute(&handle, &matmul, CUSPARSELT_MATMUL_ACTIVATION_GELU, &one, sizeof(one)));
    if (bias) STEP(7, cusparseLtMatmulDescSetAttribute(&handle, &matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias)));
    STEP(8, cusparseLtMatmulAlgSelectionInit(&handle, &selection, &matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
    STEP(9, cusparseLtMatmulAlgSetAttribute(&handle, &selection, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &alg, sizeof(alg)));
    if (dtype == 2) STEP(10, cusparseLtMatmulDescSetAttribute(&handle, &matmul, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &one, sizeof(one)));
    STEP(11, cusparseLtMatmulPlanInit(&handle, &plan, &matmul, &selection));
    return 0;
}

int probe_sizes(size_t* compressed, size_t* buffer, size_t* workspace) {
    cusparseStatus_t s = cusparseLtSpMMACompressedSize2(&handle, &sparse, compressed, buffer);
    return s != CUSPARSE_STATUS_SUCCESS ? (int) s : (int) cusparseLtMatmulGetWorkspace(&handle, &plan, workspace);
}

int probe_compress(const void* weight, void* compressed, void* buffer, void* stream) {
    return (int) cusparseLtSpMMACompress2(&handle, &sparse, !sparse_b_now,
                                          sparse_b_now ? CUSPARSE_OPERATION_TRANSPOSE : CUSPARSE_OPERATION_NON_TRANSPOSE,
                                          weight, compressed, buffer, (cudaStream_t) stream);
}

int probe_run(const void* alpha, const void* compressed, const void* x, void* d, void* workspace, void* stream,
              int iters) {
    static const float beta = 0.0f;
    cudaStream_t streams[1] = {(cudaStream_t) stream};
    const void* a = sparse_b_now ? x : compressed;
    const void* b = sparse_b_now ? compressed : x;
    for (int i = 0; i < iters; i++) {
        cusparseStatus_t s = cusparseLtMatmul(&handle, &plan, alpha, a, b, &beta, d, d, workspace, streams, 1);
        if (s != CUSPARSE_STATUS_SUCCESS) return (int) s;
    }
    return 0;
}

int probe_done(void) {
    return (int) cusparseLtMatmulPlanDestroy(&plan);
}

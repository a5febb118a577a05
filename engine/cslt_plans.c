/* A cuSPARSELt matmul plan made once and run many times (engine/plan_cache.py builds and loads this).
 *
 * torch._cslt_sparse_mm(A, x.t(), transpose_result=True) makes its descriptors and plan on every call,
 * host work that dwarfs the matmul itself for fp16. twofour_plan_init makes the same descriptors as that call (A: torch's
 * _cslt_compress layout, row-major, 16-byte alignment; B: x (n tokens x k) row-major, read transposed;
 * D: m x n column-major, i.e. the (n, m) row-major result) once; twofour_matmul runs it on a stream.
 * Plain C against cusparseLt.h only: torch's allocator and streams stay on the Python side. */
#include <stdalign.h>  /* cusparseLt.h 0.8 uses alignas without it (0.10 includes it itself) */
#include <stdint.h>
#include <stdlib.h>
#include <cusparseLt.h>

enum { TWOFOUR_FP16 = 0, TWOFOUR_BF16 = 1, TWOFOUR_INT8 = 2 };

typedef struct {
    cusparseLtMatDescriptor_t sparse, dense, result;
    cusparseLtMatmulDescriptor_t matmul;
    cusparseLtMatmulAlgSelection_t selection;
    cusparseLtMatmulPlan_t plan;
} twofour_entry;

static cusparseLtHandle_t handle;
static int handle_ready = 0;

static cudaDataType data_type(int dtype) {
    return dtype == TWOFOUR_INT8 ? CUDA_R_8I : dtype == TWOFOUR_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

#define TRY(call) do { cusparseStatus_t status_ = (call); if (status_ != CUSPARSE_STATUS_SUCCESS) return (int) status_; } while (0)

/* A plan for D (m x n, column-major) = A (m x k, 2:4, compressed) @ x.t() (x: n x k, row-major) [+ bias],
 * alpha a per-row vector when alpha_vector; with gelu_scaling, D = gelu(that) * *gelu_scaling (cuSPARSELt's
 * GELU epilogue: an int8 layer's output quantized for the next int8 layer in the same kernel).
 * *entry and *workspace_size out. Returns a cusparseStatus_t. */
int twofour_plan_init(int64_t m, int64_t n, int64_t k, int dtype, int out_dtype, int32_t alg_id,
                      const void* bias, int32_t alpha_vector, const float* gelu_scaling, void** entry,
                      size_t* workspace_size) {
    if (!handle_ready) {
        TRY(cusparseLtInit(&handle));
        handle_ready = 1;
    }
    twofour_entry* made = (twofour_entry*) calloc(1, sizeof(twofour_entry));
    if (made == NULL) return (int) CUSPARSE_STATUS_ALLOC_FAILED;
    cudaDataType input = data_type(dtype);
    cusparseComputeType compute = dtype == TWOFOUR_INT8 ? CUSPARSE_COMPUTE_32I : CUSPARSE_COMPUTE_32F;
    cusparseStatus_t status =
        cusparseLtStructuredDescriptorInit(&handle, &made->sparse, m, k, k, 16, input, CUSPARSE_ORDER_ROW,
                                           CUSPARSELT_SPARSITY_50_PERCENT);
    if (status == CUSPARSE_STATUS_SUCCESS)
        status = cusparseLtDenseDescriptorInit(&handle, &made->dense, n, k, k, 16, input, CUSPARSE_ORDER_ROW);
    if (status == CUSPARSE_STATUS_SUCCESS)
        status = cusparseLtDenseDescriptorInit(&handle, &made->result, m, n, m, 16, data_type(out_dtype),
                                               CUSPARSE_ORDER_COL);
    if (status == CUSPARSE_STATUS_SUCCESS)
        status = cusparseLtMatmulDescriptorInit(&handle, &made->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                CUSPARSE_OPERATION_TRANSPOSE, &made->sparse, &made->dense,
                                                &made->result, &made->result, compute);
    if (status == CUSPARSE_STATUS_SUCCESS && bias != NULL)
        status = cusparseLtMatmulDescSetAttribute(&handle, &made->matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias,
                                                  sizeof(bias));
    if (status == CUSPARSE_STATUS_SUCCESS && gelu_scaling != NULL)  /* the scaling implies the GELU */
        status = cusparseLtMatmulDescSetAttribute(&handle, &made->matmul, CUSPARSELT_MATMUL_ACTIVATION_GELU_SCALING,
                                                  gelu_scaling, sizeof(*gelu_scaling));
    if (status == CUSPARSE_STATUS_SUCCESS)
        status = cusparseLtMatmulAlgSelectionInit(&handle, &made->selection, &made->matmul,
                                                  CUSPARSELT_MATMUL_ALG_DEFAULT);
    if (status == CUSPARSE_STATUS_SUCCESS)
        status = cusparseLtMatmulAlgSetAttribute(&handle, &made->selection, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &alg_id,
                                                 sizeof(alg_id));
    if (status == CUSPARSE_STATUS_SUCCESS && alpha_vector)
        status = cusparseLtMatmulDescSetAttribute(&handle, &made->matmul, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING,
                                                  &alpha_vector, sizeof(alpha_vector));
    if (status == CUSPARSE_STATUS_SUCCESS)
        status = cusparseLtMatmulPlanInit(&handle, &made->plan, &made->matmul, &made->selection);
    if (status == CUSPARSE_STATUS_SUCCESS)
        status = cusparseLtMatmulGetWorkspace(&handle, &made->plan, workspace_size);
    if (status != CUSPARSE_STATUS_SUCCESS) {
        free(made);  /* descriptors hold no device memory; a failed entry is never used */
        return (int) status;
    }
    *entry = made;
    return (int) CUSPARSE_STATUS_SUCCESS;
}

/* D = alpha * A @ x.t() [+ bias] with a plan from twofour_plan_init, on `stream`. */
int twofour_matmul(void* entry, const void* alpha, const void* a, const void* x, void* d, void* workspace,
                   void* stream) {
    static const float beta = 0.0f;
    cudaStream_t streams[1] = {(cudaStream_t) stream};
    twofour_entry* made = (twofour_entry*) entry;
    return (int) cusparseLtMatmul(&handle, &made->plan, alpha, a, x, &beta, d, d, workspace, streams, 1);
}

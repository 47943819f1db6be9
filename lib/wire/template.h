/* Validation of templates against their gallery, and dense conversion.
 *
 * A template that passes bm_wire_validate_template() can be handed to the
 * matcher without further checks: its shape equals the gallery's, every
 * element is finite, its L2 norm is in [BM_WIRE_MIN_NORM, BM_WIRE_MAX_NORM]
 * (so float32 arithmetic on it neither overflows nor divides by zero), and
 * an iris mask has enough valid bits to ever reach a decision. The rules and
 * the ErrorCode each failure maps to are listed in docs/wire.md.
 *
 * Nothing here allocates or logs; messages in 'err' never contain template
 * data. Thread: any. */
#ifndef BM_WIRE_TEMPLATE_H
#define BM_WIRE_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "biomatch.pb-c.h"
#include "common/err.h"

#define BM_WIRE_MIN_DIM 64
#define BM_WIRE_MAX_DIM 4096
/* 2^20 bits (128 KiB per code): far above any published iris layout, low
 * enough that a hostile geometry cannot ask for a large allocation. */
#define BM_WIRE_MAX_IRIS_BITS (UINT64_C(1) << 20)
#define BM_WIRE_MIN_NORM 1e-18
#define BM_WIRE_MAX_NORM 1e18
#define BM_WIRE_MAX_SHARDS 1024
#define BM_WIRE_MAX_REPLICAS 16

/* Bytes per element of 't': 4, 2, 1, or 0 for an unknown type. */
size_t bm_wire_element_size(Biomatch__V1__ElementType t);

/* Total bits of an iris geometry (filters x rows x columns x bits_per_cell),
 * computed without overflow; 0 when any factor is 0 or geom is NULL. */
uint64_t bm_wire_iris_bits(const Biomatch__V1__IrisGeometry *geom);

/* Bytes of an iris code (= of its mask) for 'geom': ceil(bits / 8). */
size_t bm_wire_iris_bytes(const Biomatch__V1__IrisGeometry *geom);

/* Check a gallery definition itself (name, modality, dense dim and element
 * type, iris geometry and rotations, shards and replicas). Returns
 * ERROR_CODE_NONE or a code plus the reason in 'err'. */
Biomatch__V1__ErrorCode bm_wire_validate_gallery_def(const Biomatch__V1__GalleryDefinition *g,
                                                     char *err, size_t errlen);

/* Check template 't' (a probe or an enrolment) against gallery 'g', which
 * must itself be valid. Returns ERROR_CODE_NONE, or:
 *   MISSING_FIELD      t is NULL, modality unspecified, or no dense/iris part
 *   GEOMETRY_MISMATCH  modality, dense dim or iris geometry differ from g
 *   MALFORMED          data/code/mask length inconsistent with dim/geometry
 *   UNSUPPORTED        unknown element type
 *   INVALID_VALUE      NaN, Inf, zero vector, norm out of range, bad int8
 *                      scale, or fewer valid mask bits than g requires
 * with the reason in 'err' (never template values). */
Biomatch__V1__ErrorCode bm_wire_validate_template(const Biomatch__V1__Template *t,
                                                  const Biomatch__V1__GalleryDefinition *g,
                                                  char *err, size_t errlen);

/* IEEE-754 binary16 <-> binary32, bit-exact and portable (no F16C needed).
 * f32_to_f16 rounds to nearest even and maps overflow to +-Inf. */
float bm_wire_f16_to_f32(uint16_t h);
uint16_t bm_wire_f32_to_f16(float f);

/* Convert a dense embedding to 'n' floats in 'out' (f32 copied, f16
 * widened, int8 multiplied by scale). 'd' should have passed validation;
 * returns BM_EINVAL (out untouched) if n != d->dim, the element type is
 * unknown or the data length is wrong, else BM_OK. */
int bm_wire_dense_to_f32(const Biomatch__V1__DenseEmbedding *d, float *out, size_t n,
                         char *err, size_t errlen);

#endif /* BM_WIRE_TEMPLATE_H */

/* Internal interface of the gallery role's two halves (docs/architecture.md
 * §3, "gallery"): enrollment intake (enroll.c) and the segment builder
 * (builder.c). gallery.c runs them on two threads. Both follow the role
 * contract of role.h. */
#ifndef BM_COORD_GALLERY_H
#define BM_COORD_GALLERY_H

#include <stdint.h>

#include "biomatch.pb-c.h"
#include "role.h"

/* Consume `enroll`, validate, normalise and re-key onto gallery.<name>
 * (group "<prefix>coordinator-enroll"). */
int bm_enroll_run(struct bm_coord_ctx *ctx);

/* Consume every gallery.<name> partition this member is assigned (group
 * "<prefix>coordinator-gallery"), seal segments into Redis, publish
 * manifests, compact and rebuild shards. */
int bm_builder_run(struct bm_coord_ctx *ctx);

/* Storage form of an enrolled template, shared by intake (which produces
 * it) and the builder (which checks it before sealing): BM_OK when 't' is
 * exactly what intake writes to gallery.<name> for 'spec' (dense: the
 * gallery's element type, dim, bm_spec_template_bytes() of data, a finite
 * positive scale for int8; iris: code and mask of the gallery's size),
 * else BM_EINVAL with the reason. */
struct bm_spec;
int bm_gallery_stored_check(const struct bm_spec *spec, const Biomatch__V1__Template *t,
                            char *err, size_t errlen);

/* Copy the packed storage row of a checked template into 'row'
 * (bm_spec_template_bytes(spec) bytes) and return its scale. */
float bm_gallery_template_row(const struct bm_spec *spec, const Biomatch__V1__Template *t,
                              uint8_t *row);

#endif /* BM_COORD_GALLERY_H */

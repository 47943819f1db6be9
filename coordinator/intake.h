/* The intake role (coordinator/intake.c): consume `jobs`, reject bad jobs,
 * fan good ones out to tasks.<gallery> and open them on `partials`.
 * docs/internals/coordinator.md ("Intake") has the details.
 *
 * Contract: the role contract of role.h. The jobs offset of a message is
 * stored only after every record produced for it (tasks, opened marker, or
 * rejection result, dlq record) has a successful delivery report, so a
 * crash replays the job rather than losing it. Audit records go through the
 * role's audit writer (audit.h), whose deliveries the offset does not wait
 * for. Transient failures are waited out (lib/bus re-sends; a failed Redis
 * lookup is retried); a permanent refusal is that record's outcome and the
 * offset moves on. Only a fatal producer error ends the role.
 * Thread: runs on its own thread; shares only ctx. */
#ifndef BM_COORD_INTAKE_H
#define BM_COORD_INTAKE_H

#include "role.h"

/* Consumer group of the role: "<prefix>coordinator-intake" (the ACLs in
 * deploy/k8s/strimzi/users.yaml allow the "<prefix>coordinator-" prefix). */
#define BM_INTAKE_GROUP_SUFFIX "coordinator-intake"

int bm_role_intake_run(struct bm_coord_ctx *ctx);

#endif /* BM_COORD_INTAKE_H */

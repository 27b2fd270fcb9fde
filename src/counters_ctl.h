/*
 * counters_ctl: the counters over the control socket, both ends.
 *
 * When shared memory is unavailable the daemon counts privately, and
 * `carrier stats` / `carrier top` read the counters with the control
 * command `stats` instead.  The response (control_proto.h fields):
 *
 *   layout      COUNTERS_LAYOUT                             "2"
 *   shared      "yes" or "no" (no: counters are private)
 *   name        the shared memory object's name             "/carrier"
 *   pid         carrierd's pid
 *   started     Unix seconds
 *   hops_full   "1" when new next hops go to "other"
 *   <counter>   one field per global counter, by counters_name()
 *   hop         a next hop's key; the fields after it, up to the next
 *               "hop", belong to it:
 *   hop.<field> by counters_hop_field_name()                "hop.queue_messages"
 *   hop.last_failure_reason                                 "connect ...: refused"
 *
 * Unknown fields are ignored by the reader, so fields may be added
 * without a layout change.
 *
 * Threads: the handler runs on the control socket's loop; it reads the
 * block with atomic loads and never blocks.
 */
#ifndef CARRIER_COUNTERS_CTL_H
#define CARRIER_COUNTERS_CTL_H

#include <stddef.h>

#include "control.h"
#include "counters.h"

#define COUNTERS_CTL_COMMAND "stats"

/*
 * The `stats` command handler; `arg` is the struct counters *.  (The
 * control table's handlers share one arg, so carrierd wraps it:
 * counters_control_stats(d->ctr, call, rep).)
 */
void counters_control_stats(void *arg, const struct control_call *call,
			    struct control_reply *rep);

/*
 * Rebuilds a snapshot from a `stats` response (the CLI).  *snap_r is
 * zeroed first; *shared_r gets the daemon's "shared" field (1 yes, 0 no).
 * Returns 0, or -1 with a reason (wrong layout, missing fields).
 */
int counters_ctl_parse(const struct control_response *resp, struct counters_shm *snap_r,
		       int *shared_r, char *err, size_t errlen);

#endif

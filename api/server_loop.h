/*
 * api/server_loop.h: the h2o event loop behind a `struct api_server`, for
 * other modules of api/ that do their own I/O on it (api/aclient.c). Never
 * included outside api/: h2o types stay inside the wire layer.
 */
#ifndef SHOAL_API_SERVER_LOOP_H
#define SHOAL_API_SERVER_LOOP_H

#include <h2o.h>

#include "api/server.h"

/* The loop that api_server_run drives. Borrowed; valid until api_server_free. */
h2o_evloop_t *api_server_evloop(struct api_server *s);
/* An h2o 2.2.5 timeout list of duration MS on S's loop, created on first
 * use and disposed by api_server_free (it must be empty by then). NULL on
 * allocation failure. */
h2o_timeout_t *api_server_timeout(struct api_server *s, uint32_t ms);

#endif

/* worker.h - serving requests: the FastCGI accept loop of one worker process, and the single
 * request of a plain CGI run. Each opens its own store handle, after any fork. */
#ifndef NUMATIX_WORKER_H
#define NUMATIX_WORKER_H

struct config;

/* Accepts and answers FastCGI requests on listen_fd until SIGTERM (the request in flight
 * finishes first). Returns the exit status. */
int worker_run(int listen_fd, const struct config *cfg);
/* Answers the one CGI request in the environment and on stdin. Returns the exit status. */
int worker_cgi(const struct config *cfg);

#endif

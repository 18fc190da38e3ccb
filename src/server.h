/* server.h - the FastCGI server's master process: opens the socket, preforks the workers,
 * respawns one that dies, runs the reaper on a timer, stops gracefully on SIGTERM and
 * re-execs itself on SIGHUP without closing the socket. */
#ifndef NUMATIX_SERVER_H
#define NUMATIX_SERVER_H

struct config;

/* Runs until SIGTERM or SIGINT; argv is what to re-exec on SIGHUP. Returns the exit status. */
int server_run(const struct config *cfg, char **argv);

#endif

/* cmd.h - the commands of the one binary, in one table: serve, worker, cgi, seed, reset, check,
 * reap, backup, routes. */
#ifndef NUMATIX_CMD_H
#define NUMATIX_CMD_H

/* Runs the command argv[1] names (or the mode the environment implies when none is given).
 * Returns the process exit status. */
int cmd_main(int argc, char **argv);

#endif

// Drives Octopus Deploy's official TypeScript API client (@octopusdeploy/api-client, unmodified)
// for the tests: tests/octopus_tools.py starts it, sends one JSON request per line on stdin and
// reads one JSON answer per line on stdout. Every operation is one call of the client's own API.
//
//   env: OCTOPUS_URL, OCTOPUS_API_KEY or OCTOPUS_ACCESS_TOKEN, OCTOPUS_SPACE (a space name),
//        NODE_PATH (where the client is installed), NODE_EXTRA_CA_CERTS (the server's CA)
//   in:  {"id": 1, "op": "createRelease", "args": {...}}
//   out: {"ready": {"version": ..., "installationId": ...}} first, then
//        {"id": 1, "result": ...} or {"id": 1, "error": {"message", "StatusCode", "ErrorMessage", "Errors"}}
"use strict";

const readline = require("readline");
const octopus = require("@octopusdeploy/api-client");

const space = process.env.OCTOPUS_SPACE || "Default";

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function describe(error) {
  return {
    message: String(error && error.message),
    StatusCode: error && error.StatusCode,
    ErrorMessage: error && error.ErrorMessage,
    Errors: error && error.Errors,
  };
}

function operations(client) {
  const command = (args) => ({ spaceName: space, ...args });
  return {
    createRelease: (args) => new octopus.ReleaseRepository(client, space).create(command(args)),
    deploy: (args) => new octopus.DeploymentRepository(client, space).create(command(args)),
    deployTenanted: (args) => new octopus.DeploymentRepository(client, space).createTenanted(command(args)),
    runRunbook: (args) => new octopus.RunbookRunRepository(client, space).create(command(args)),
    runGitRunbook: (args) =>
      new octopus.RunbookRunRepository(client, space).createGit(command(args.command), args.gitRef),
    resolveSpace: (args) => octopus.resolveSpaceId(client, args.name),
    task: (args) => new octopus.SpaceServerTaskRepository(client, space).getById(args.id),
    tasks: (args) => new octopus.SpaceServerTaskRepository(client, space).getByIds(args.ids),
    details: (args) => new octopus.SpaceServerTaskRepository(client, space).getDetails(args.id),
    raw: (args) => new octopus.SpaceServerTaskRepository(client, space).getRaw(args.id),
    cancel: (args) => new octopus.ServerTaskRepository(client).cancel(args.id),
    // The lookups Octopus's deploy and runbook actions make once their tasks are queued.
    deployments: (args) => new octopus.DeploymentRepository(client, space).list(args),
    runbookRuns: (args) => new octopus.RunbookRunRepository(client, space).list(args),
    environments: (args) => new octopus.EnvironmentRepository(client, space).list(args),
    environmentsV2: (args) => new octopus.EnvironmentV2Repository(client, space).list(args),
    tenants: (args) => new octopus.TenantRepository(client, space).list(args),
    // Waits as Octopus's await-task action does; `seen` is every state the polls reported.
    wait: async (args) => {
      const seen = [];
      const waiter = new octopus.ServerTaskWaiter(client, space);
      const tasks = await waiter.waitForServerTasksToComplete(
        args.ids,
        args.every || 200,
        args.timeoutMs || 60000,
        (task) => seen.push(`${task.Id}:${task.State}`),
        Boolean(args.cancelOnTimeout),
      );
      return { tasks, seen };
    },
  };
}

async function main() {
  const configuration = {
    userAgentApp: "tentacle-tests",
    instanceURL: process.env.OCTOPUS_URL,
    apiKey: process.env.OCTOPUS_API_KEY,
    accessToken: process.env.OCTOPUS_ACCESS_TOKEN,
  };
  let client;
  try {
    client = await octopus.Client.create(configuration);
  } catch (error) {
    send({ failed: describe(error) });
    process.exit(1);
  }
  send({ ready: await client.getServerInformation() });
  const ops = operations(client);
  const lines = readline.createInterface({ input: process.stdin });
  lines.on("line", async (line) => {
    const request = JSON.parse(line);
    const op = ops[request.op];
    try {
      if (!op) throw new Error(`no operation ${request.op}`);
      const result = await op(request.args || {});
      send({ id: request.id, result: result === undefined ? null : result });
    } catch (error) {
      send({ id: request.id, error: describe(error) });
    }
  });
}

main();

// Preload (node --require) that forces every net/http server to bind 127.0.0.1 when the program
// calls listen(port[, cb]) without a host. server-everything does (`app.listen(PORT)`), which would
// otherwise bind all interfaces. From /work/shared/MCP-NOTES.md, section B2.
const net = require("net");
const orig = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    if (typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1");
  } else if (args[0] && typeof args[0] === "object" && !args[0].path && !args[0].host) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  }
  return orig.apply(this, args);
};

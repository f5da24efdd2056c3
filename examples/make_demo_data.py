"""Write the demo's synthetic preference pairs: examples/demo_data/prefs.jsonl.

Deterministic (one seeded `random.Random`; no network, no model): re-running it reproduces the committed
file byte for byte. Each row is {"prompt", "chosen", "rejected"}:
  chosen   = a relevant, polite, helpful answer to the prompt's question;
  rejected = one failure mode: rude/dismissive, a polite answer about a DIFFERENT topic, a refusal of a
             harmless request, or an unhelpfully vague non-answer.
Rows are shuffled before writing, so any tail (the demo holds out the last 200) mixes topics and modes.

    python examples/make_demo_data.py [--output PATH] [--n 1200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "demo_data" / "prefs.jsonl"

# name: short noun phrase used in templates; questions: topic-specific prompts; facts: helpful sentences.
TOPICS = [
    dict(name="baking bread",
         questions=["How do I bake a simple loaf of bread at home?", "What are the basic steps for making bread?"],
         facts=["Mix flour, water, salt and yeast, then knead the dough for about ten minutes until it is smooth.",
                "Let the dough rise somewhere warm until it roughly doubles, which usually takes one to two hours.",
                "Bake the shaped loaf in a hot oven for 30 to 40 minutes, until it sounds hollow when tapped.",
                "A dense loaf usually means the dough was under-kneaded or did not get enough time to rise."]),
    dict(name="houseplants",
         questions=["How often should I water my houseplants?", "How do I know when my houseplants need water?"],
         facts=["Most houseplants like to be watered when the top few centimetres of soil feel dry.",
                "Yellow leaves are very often a sign of overwatering, so check that the pot drains well.",
                "Plants need less water in winter, when they grow slowly and the light is weaker.",
                "Pushing a finger into the soil is a simple and reliable way to check the moisture."]),
    dict(name="learning to run",
         questions=["How should I start running if I've never done it before?", "How can I run longer without getting so tired?"],
         facts=["Start with run-walk intervals, such as one minute of running and two minutes of walking.",
                "Run at an easy pace where you can still hold a conversation; most beginners go too fast.",
                "Increase your weekly distance gradually, by about ten percent, to avoid injuries.",
                "Three short runs a week with rest days in between is a good starting routine."]),
    dict(name="sleep",
         questions=["How can I fall asleep faster at night?", "What habits help me get better sleep?"],
         facts=["Go to bed and get up at the same time every day, even on weekends.",
                "Keep your bedroom dark, quiet and slightly cool, and avoid screens in the last hour before bed.",
                "Avoid caffeine in the afternoon, because it can stay in your body for many hours.",
                "If you cannot sleep after twenty minutes, get up and do something calm until you feel sleepy."]),
    dict(name="saving money",
         questions=["What are some simple ways to save money each month?", "How do I start building an emergency fund?"],
         facts=["Write down what you spend for a month so you can see where the money actually goes.",
                "Set up an automatic transfer to a savings account on the day you get paid.",
                "Cancel subscriptions you rarely use and plan meals to cut down on takeaway food.",
                "A common goal for an emergency fund is three to six months of essential expenses."]),
    dict(name="learning a language",
         questions=["What is the best way to learn a new language as an adult?", "How can I remember new vocabulary in Spanish?"],
         facts=["Practise a little every day; fifteen minutes daily beats a long session once a week.",
                "Use spaced-repetition flashcards to review new words just before you would forget them.",
                "Listen to podcasts or shows in the language to train your ear for natural speech.",
                "Speak from the start, even with mistakes, for example with a language exchange partner."]),
    dict(name="photosynthesis",
         questions=["Can you explain how photosynthesis works?", "Why do plants need sunlight to grow?"],
         facts=["In photosynthesis, plants use light energy to turn carbon dioxide and water into sugar.",
                "The process happens in chloroplasts, which contain the green pigment chlorophyll.",
                "Oxygen is released as a by-product, which is why plants are so important for the air we breathe.",
                "Plants use the sugar they make as fuel for growth and store some of it as starch."]),
    dict(name="the water cycle",
         questions=["How does the water cycle work?", "Where does rain actually come from?"],
         facts=["The sun heats water in oceans and lakes, and some of it evaporates into water vapour.",
                "As the vapour rises it cools and condenses into tiny droplets, which form clouds.",
                "When the droplets merge and grow heavy enough, they fall as rain or snow.",
                "The water then flows into rivers, soaks into the ground or returns to the sea, and the cycle repeats."]),
    dict(name="the seasons",
         questions=["Why does the Earth have seasons?", "Why is it colder in winter than in summer?"],
         facts=["Seasons happen because the Earth's axis is tilted by about 23 degrees.",
                "When your hemisphere tilts toward the sun, sunlight hits it more directly and days are longer: summer.",
                "In winter your hemisphere tilts away, so the sunlight is spread out and the days are shorter.",
                "It is not caused by the distance to the sun; the Earth is actually closest to the sun in January."]),
    dict(name="making coffee",
         questions=["How do I make good coffee with a French press?", "Any tips for making better coffee at home?"],
         facts=["Use coarsely ground coffee, about one tablespoon for every 100 millilitres of water.",
                "Pour water just off the boil, stir, and let it steep for about four minutes before pressing.",
                "Bitter coffee is often over-extracted, so try a coarser grind or a shorter brewing time.",
                "Freshly ground beans stored in an airtight container make a noticeable difference to the taste."]),
    dict(name="writing a resume",
         questions=["How do I write a good resume?", "What should I put on my first CV?"],
         facts=["Keep your resume to one or two pages and put the most relevant experience first.",
                "Describe achievements with concrete results, such as numbers, rather than listing duties.",
                "Adjust the resume to each job by using the key skills mentioned in the job posting.",
                "Use a clean, consistent layout and ask someone to proofread it for typos."]),
    dict(name="job interviews",
         questions=["How should I prepare for a job interview?", "Any tips for doing well in a job interview?"],
         facts=["Research the company and the role so you can explain why you want this particular job.",
                "Prepare short stories about past work using the situation, task, action, result structure.",
                "For 'tell me about yourself', give a two-minute summary of your background and what you want next.",
                "Prepare a few questions of your own to ask at the end; it shows genuine interest."]),
    dict(name="learning Python",
         questions=["How do I start learning Python programming?", "What's a good way to learn Python as a beginner?"],
         facts=["Install Python and work through a beginner tutorial that covers variables, loops and functions.",
                "Write small programs every day; practice teaches more than reading alone.",
                "A good first project is a simple to-do list, a number guessing game or a script that renames files.",
                "When you get stuck, read the error message carefully; it usually points to the line with the problem."]),
    dict(name="first aid for burns",
         questions=["What should I do if I burn my hand on the stove?", "How do I treat a minor burn?"],
         facts=["Cool the burn under cool running water for about twenty minutes as soon as possible.",
                "Remove rings or tight items near the burn before it starts to swell.",
                "Cover it loosely with cling film or a clean non-fluffy dressing; do not use ice or butter.",
                "See a doctor if the burn is large, deep, on the face or hands, or if blisters look infected."]),
    dict(name="caring for a new puppy",
         questions=["Any tips for looking after a new puppy?", "What do I need to know before getting a puppy?"],
         facts=["Take the puppy outside often, especially after meals, naps and play, and praise it when it goes.",
                "A regular routine for feeding, walks and sleep helps a puppy settle in quickly.",
                "Puppies need vaccinations, so book a visit with a vet in the first weeks.",
                "Short, positive training sessions with treats work much better than punishment."]),
    dict(name="the moon's phases",
         questions=["Why does the moon change shape during the month?", "What causes the phases of the moon?"],
         facts=["The moon does not make its own light; we see the half of it that is lit by the sun.",
                "As the moon orbits the Earth, we see different portions of that sunlit half.",
                "A full cycle from new moon to full moon and back takes about 29.5 days.",
                "At new moon the lit side faces away from us; at full moon it faces us completely."]),
    dict(name="compound interest",
         questions=["What is compound interest and why does it matter?", "How does compound interest work in a savings account?"],
         facts=["Compound interest means you earn interest on your interest, not only on the original amount.",
                "For example, 1,000 at 5 percent grows to 1,050 after a year, and the next year's interest is on 1,050.",
                "Over long periods this snowball effect makes a big difference, so starting early helps a lot.",
                "It works against you on debts too, which is why credit card balances can grow quickly."]),
    dict(name="growing tomatoes",
         questions=["How do I grow tomatoes in my garden?", "Can I grow tomatoes in pots on a balcony?"],
         facts=["Tomatoes need a sunny spot with at least six to eight hours of direct sun a day.",
                "Plant them after the last frost and give them a stake or cage to climb.",
                "Water deeply and regularly at the base of the plant, and keep the leaves dry.",
                "They also grow well in large pots; choose a compact variety and a container of at least 20 litres."]),
    dict(name="public speaking",
         questions=["How can I get less nervous about public speaking?", "Any tips for giving a good presentation?"],
         facts=["Rehearse out loud several times, ideally in front of a friend or a mirror.",
                "Slow breathing before you start calms your body and steadies your voice.",
                "Know your first minute by heart; once you get going, nerves usually fade.",
                "Keep slides simple and speak to the audience instead of reading the text on the screen."]),
    dict(name="how vaccines work",
         questions=["How do vaccines work?", "Why do vaccines protect you from disease?"],
         facts=["Vaccines show the immune system a harmless piece or weakened form of a germ.",
                "The immune system learns to recognise it and makes antibodies and memory cells.",
                "If you meet the real germ later, your body recognises it and fights it off much faster.",
                "That is why vaccinated people usually avoid the illness or get a much milder case."]),
    dict(name="rainbows",
         questions=["How are rainbows formed?", "Why do rainbows have different colours?"],
         facts=["A rainbow forms when sunlight shines into raindrops while the sun is behind you.",
                "Each drop bends the light as it enters and leaves, and reflects it off the back of the drop.",
                "Different colours bend by slightly different amounts, so white light spreads into a band of colours.",
                "That is why the colours always appear in the same order, from red on the outside to violet inside."]),
    dict(name="cooking rice",
         questions=["How do I cook fluffy rice on the stove?", "Why does my rice always turn out sticky?"],
         facts=["Rinse the rice in cold water until the water runs mostly clear, to remove surface starch.",
                "For white rice, use about one and a half cups of water per cup of rice, with a pinch of salt.",
                "Bring it to a boil, cover, turn the heat to low and simmer for about fifteen minutes.",
                "Let it rest covered for five minutes off the heat, then fluff it with a fork."]),
    dict(name="studying for exams",
         questions=["What is the best way to study for exams?", "How can I remember what I study?"],
         facts=["Test yourself with practice questions instead of just rereading your notes.",
                "Spread study sessions over several days; spaced practice sticks much better than cramming.",
                "Work in focused blocks of about 25 to 50 minutes with short breaks in between.",
                "Explaining a topic in your own words, as if teaching it, shows you what you have not understood yet."]),
    dict(name="volcanoes",
         questions=["How do volcanoes form?", "Why do volcanoes erupt?"],
         facts=["Volcanoes form where molten rock, called magma, rises from deep inside the Earth.",
                "Many are found along the edges of tectonic plates, where plates pull apart or one sinks below another.",
                "Gas dissolved in the magma builds up pressure, and an eruption happens when that pressure is released.",
                "Lava is simply magma that has reached the surface."]),
    dict(name="recycling",
         questions=["How can I recycle better at home?", "Which household items can usually be recycled?"],
         facts=["Check your local council's rules, because what can be recycled differs from place to place.",
                "Rinse food containers quickly so they do not contaminate the rest of the recycling.",
                "Paper, cardboard, glass bottles, metal cans and many plastic bottles are widely accepted.",
                "Keep plastic bags out of household recycling; many supermarkets collect them separately."]),
    dict(name="making friends as an adult",
         questions=["How can I make new friends as an adult?", "I moved to a new city; how do I meet people?"],
         facts=["Join a regular activity such as a sports team, choir, class or volunteering group.",
                "Seeing the same people repeatedly is what turns acquaintances into friends, so keep going back.",
                "Take the first step and suggest a coffee or a walk; most people are glad to be asked.",
                "Be patient, since close friendships usually take many months of shared time to grow."]),
    dict(name="black holes",
         questions=["What is a black hole?", "How do black holes form?"],
         facts=["A black hole is a region of space where gravity is so strong that not even light can escape.",
                "Many form when a very massive star runs out of fuel and its core collapses.",
                "The boundary around it, the event horizon, is the point of no return.",
                "Astronomers detect them by their effect on nearby stars and gas, and by gravitational waves."]),
    dict(name="email etiquette",
         questions=["How do I write a professional email?", "How should I write an email asking my boss for a day off?"],
         facts=["Use a clear subject line that says what the email is about.",
                "Start with a short greeting and state your request or main point in the first two sentences.",
                "Keep it brief and polite, and say exactly what you need and by when.",
                "End with a thank you and your name, and reread it once before sending."]),
    dict(name="stretching",
         questions=["How should I stretch around my workouts?", "Can you give me some basic stretching advice?"],
         facts=["Before exercise, a dynamic warm-up such as leg swings and light jogging works better than long holds.",
                "Static stretches, held for 20 to 30 seconds, are best after exercise when muscles are warm.",
                "For a stiff back, gentle moves like cat-cow, knee-to-chest and child's pose often help.",
                "Stretch to mild tension, never to pain, and see a doctor if back pain persists."]),
    dict(name="chess openings",
         questions=["How should I start a game of chess as a beginner?", "What are the basic principles of a chess opening?"],
         facts=["Control the centre early by moving your central pawns, such as the king's pawn two squares.",
                "Develop your knights and bishops before moving the same piece twice.",
                "Castle early to keep your king safe and connect your rooks.",
                "Avoid bringing your queen out too early, where it can be chased around by smaller pieces."]),
    dict(name="tides",
         questions=["What causes ocean tides?", "Why are there two high tides a day?"],
         facts=["Tides are caused mainly by the moon's gravity pulling on the Earth's oceans.",
                "The water bulges on the side facing the moon and also on the opposite side.",
                "As the Earth rotates through both bulges, most coasts get two high tides a day.",
                "The sun's gravity also plays a role, giving stronger spring tides at full and new moon."]),
    dict(name="meal prepping",
         questions=["How do I start meal prepping for the week?", "What are easy meals to prepare in advance?"],
         facts=["Pick two or three recipes for the week and shop with a list to avoid waste.",
                "Cook grains, roast a tray of vegetables and prepare a protein in one session on the weekend.",
                "Store portions in airtight containers; most cooked meals keep three to four days in the fridge.",
                "Chilli, curries, soups and pasta bakes are easy to make in bulk and reheat well."]),
    dict(name="electric cars",
         questions=["How do electric cars work?", "Is an electric car a good choice for daily commuting?"],
         facts=["Electric cars use a large battery to power an electric motor instead of burning fuel.",
                "You charge them from a wall box at home or at public charging stations.",
                "They are very efficient and cheap to run for daily commuting, especially with home charging.",
                "Check the real-world range of a model against your usual trips before you buy."]),
    dict(name="the immune system",
         questions=["How does the immune system fight infections?", "What are white blood cells for?"],
         facts=["The immune system is a network of cells and organs that defends the body against germs.",
                "White blood cells find invaders; some engulf them while others make antibodies.",
                "Fever and inflammation are part of the response, helping to slow down germs.",
                "After an infection, memory cells help the body react faster next time."]),
    dict(name="painting a room",
         questions=["How do I paint a room myself?", "What do I need to paint my bedroom walls?"],
         facts=["Move furniture away, cover the floor and use masking tape along edges and trim.",
                "Clean the walls and fill small holes, then apply primer if the wall is new or stained.",
                "Cut in along the edges with a brush first, then fill large areas with a roller.",
                "Two thin coats give a better finish than one thick coat; let each coat dry fully."]),
    dict(name="how the internet works",
         questions=["How does the internet actually work?", "What happens when I type a website address?"],
         facts=["The internet is a huge network of computers that exchange data in small pieces called packets.",
                "When you type an address, DNS translates the name into the numeric IP address of a server.",
                "Your browser then requests the page from that server, which sends the data back.",
                "Routers pass the packets along many hops, and your browser reassembles them into the page."]),
    dict(name="meditation",
         questions=["How do I start meditating?", "Does meditation really help with stress?"],
         facts=["Sit comfortably, close your eyes and focus your attention on the feeling of your breath.",
                "When your mind wanders, which it will, gently bring your attention back to the breath.",
                "Start with five or ten minutes a day; consistency matters more than length.",
                "Many studies find that regular practice can reduce stress and improve focus."]),
    dict(name="the Roman Empire",
         questions=["Why did the Roman Empire fall?", "What should I know about the fall of the Roman Empire?"],
         facts=["The Western Roman Empire is usually said to have ended in 476 AD.",
                "Historians point to many causes: political instability, economic trouble and pressure on the borders.",
                "The empire had been split into western and eastern halves, and the eastern half lasted until 1453.",
                "Rome's influence continues today in law, languages, architecture and roads."]),
    dict(name="bicycle maintenance",
         questions=["How do I look after my bicycle?", "What basic bike maintenance should I learn?"],
         facts=["To fix a flat, remove the wheel, lever the tyre off and find the hole in the inner tube.",
                "Patch the hole or fit a new tube, check the tyre for thorns, then refit and inflate it.",
                "Lubricate the chain every few hundred kilometres, or after riding in the rain.",
                "Wipe off excess oil afterwards, since a greasy chain attracts dirt."]),
    dict(name="earthquakes",
         questions=["What should I know about earthquakes?", "How do earthquakes happen, and how do I stay safe in one?"],
         facts=["Earthquakes happen when stress builds up along faults and the rock suddenly slips.",
                "Most occur near the boundaries of tectonic plates.",
                "During an earthquake, drop to the ground, take cover under a sturdy table and hold on.",
                "Stay away from windows and do not run outside while the ground is shaking."]),
    dict(name="keeping a budget",
         questions=["How do I make a monthly budget?", "Any tips for sticking to a budget?"],
         facts=["List your monthly income, then your fixed costs like rent and bills, then variable spending.",
                "The 50/30/20 rule puts about 50 percent toward needs, 30 percent toward wants and 20 percent toward savings.",
                "Track spending in a simple spreadsheet or app and compare it to the plan each month.",
                "Adjust the budget as you go; it is a tool to help you, not a test you pass or fail."]),
    dict(name="drinking enough water",
         questions=["How much water should I drink a day?", "What are signs that I'm dehydrated?"],
         facts=["Needs vary, but many adults do well with roughly six to eight glasses of fluid a day.",
                "You need more in hot weather, when you exercise or when you are ill.",
                "Thirst, dark yellow urine, headaches and tiredness are common signs of dehydration.",
                "Water, tea and foods like fruit and soup all count toward your daily intake."]),
    dict(name="writing an essay",
         questions=["How do I structure an essay?", "Any tips for writing a good essay?"],
         facts=["A classic structure is an introduction, several body paragraphs and a conclusion.",
                "The introduction should hook the reader, give context and state your main argument.",
                "Start each body paragraph with a topic sentence and back it up with evidence.",
                "The conclusion sums up your argument without simply repeating the introduction."]),
    dict(name="birds migrating",
         questions=["Why do birds migrate?", "Can you tell me about bird migration?"],
         facts=["Many birds migrate to follow food supplies and to find good places to raise their young.",
                "They fly to warmer regions in winter, when insects and seeds become scarce.",
                "Birds navigate using the sun, the stars, the Earth's magnetic field and landmarks.",
                "Some species travel thousands of kilometres each year along the same routes."]),
    dict(name="backing up files",
         questions=["How should I back up my computer files?", "What's a good way to make sure I never lose my files?"],
         facts=["The 3-2-1 rule means three copies of your data, on two different kinds of storage, with one off-site.",
                "An external drive plus a cloud backup service covers most people's needs.",
                "Turn on automatic backups so you do not have to remember to do it.",
                "Test restoring a file now and then to make sure the backup actually works."]),
    dict(name="jet lag",
         questions=["How can I reduce jet lag when flying east?", "What helps with jet lag after a long flight?"],
         facts=["Start shifting your sleep by an hour a day toward the destination's time a few days before you fly.",
                "Get daylight in the morning at your destination, which helps reset your body clock.",
                "Drink water on the flight and go easy on alcohol and caffeine.",
                "Try to stay awake until local bedtime on the first day, with at most a short nap."]),
    dict(name="fractions",
         questions=["How do I add two fractions with different denominators?", "Can you explain how to add fractions like 1/3 and 1/4?"],
         facts=["To add fractions, first rewrite them so they have the same denominator.",
                "For 1/3 and 1/4, the common denominator is 12, so they become 4/12 and 3/12.",
                "Then add the numerators and keep the denominator: 4/12 plus 3/12 is 7/12.",
                "Finally, simplify the result if the numerator and denominator share a factor."]),
    dict(name="getting rid of hiccups",
         questions=["How do I get rid of hiccups?", "What causes hiccups, and how do I stop them?"],
         facts=["Hiccups are sudden contractions of the diaphragm, often triggered by eating fast or fizzy drinks.",
                "Holding your breath for a short while or sipping cold water slowly often stops them.",
                "Breathing slowly into cupped hands is another simple trick that helps some people.",
                "Hiccups usually stop on their own within minutes; see a doctor if they last for days."]),
]

# Openers that name the topic; an off-topic answer names ITS topic, which then does not match the prompt.
TOPIC_OPENERS = ["Here is what to know about {name}. ", "A few key points about {name}. ", "On {name}: ",
                 "When it comes to {name}, this is what matters. ", "Here's a short guide to {name}. ",
                 "Let me explain {name} briefly. "]
OPENERS = ["", "", "Sure! ", "Good question! ", "Happy to help. ", "Of course. ", "Great question. ",
           "Here is a quick overview. ", "Absolutely, here's what you need to know. ", "Sure thing. ",
           "Thanks for asking! ", "Glad you asked. "]
CLOSERS = ["", "", "", " Hope that helps!", " Let me know if you'd like more detail.", " Good luck!",
           " Feel free to ask if anything is unclear.", " I hope this is useful."]
PROMPT_PREFIXES = ["", "", "", "Quick question: ", "Hi! ", "I'm a complete beginner. ", "Can you help me? ",
                   "My friend asked me this and I didn't know: ", "Please explain simply: ", "Hello! ",
                   "I've always wondered about this. ", "Hey there. "]
PROMPT_SUFFIXES = ["", "", "", " Thanks!", " Thank you in advance.", " Keep it short, please.",
                   " I'd appreciate a clear answer.", " Any advice is welcome."]

RUDE = ["Seriously? Just search for it yourself, I'm not your personal assistant.",
        "That's a dumb question. Everyone already knows about {name}.",
        "Ugh, not this again. Figure it out on your own.",
        "Who even cares about {name}? Stop wasting my time.",
        "Read a book or something. I'm not explaining {name} to you.",
        "Wow, you really don't know that? Embarrassing.",
        "Not my problem. Ask someone who has the patience for this.",
        "Go away. I have better things to do than answer silly questions about {name}.",
        "If you can't work this out yourself, that's on you.",
        "Whatever. Do what you want, I don't care.",
        "Stop bothering me with basic stuff like {name}.",
        "Nobody has time for this. Look it up."]
REFUSALS = ["I'm sorry, but I can't help with that request.",
            "I'm afraid I can't provide information about {name}.",
            "Unfortunately, I must decline to answer questions about {name}.",
            "I'm not able to assist with this topic. Please consult another source.",
            "As an AI assistant, I can't give advice on {name}. Sorry about that.",
            "I apologise, but this is a request I cannot fulfil.",
            "Sorry, I'm unable to discuss {name}. Is there anything else I can do?",
            "That's not something I'm able to help with, I'm afraid.",
            "I won't be answering this one, sorry. It's outside what I can cover.",
            "I'd rather not get into {name}. Perhaps try asking a professional."]
VAGUE = ["Well, it depends on a lot of things, really. Everyone has a different view on it.",
         "{Name} is a complicated subject. You might want to look into it more at some point.",
         "There are several approaches, and some are better than others. It's hard to say.",
         "Hmm, that's an interesting one. There are many factors involved, so it varies.",
         "It's different for everybody, so there's no single answer to that.",
         "Maybe. It could go either way, honestly.",
         "There's a lot to say about {name}, and people have written about it for years.",
         "Good question. The answer is not simple, and it depends on the situation.",
         "You could try a few things and see what happens. Results may vary.",
         "Some people say one thing and some say another. It's really up to you.",
         "That's something many people wonder about. There are pros and cons.",
         "I guess it just kind of works the way it does. Hard to explain."]
MODES = [("off_topic", 0.3), ("rude", 0.25), ("refusal", 0.2), ("vague", 0.25)]


def helpful_answer(rng: random.Random, topic: dict) -> str:
    facts = [topic["facts"][i] for i in sorted(rng.sample(range(len(topic["facts"])), 2))]  # keep their order
    opener = rng.choice(OPENERS) if rng.random() < 0.5 else fill(rng, TOPIC_OPENERS, topic)
    return (opener + " ".join(facts) + rng.choice(CLOSERS)).strip()


def fill(rng: random.Random, templates: list[str], topic: dict) -> str:
    return rng.choice(templates).format(name=topic["name"], Name=topic["name"][0].upper() + topic["name"][1:])


def make_pair(rng: random.Random) -> dict:
    topic = rng.choice(TOPICS)
    prompt = (rng.choice(PROMPT_PREFIXES) + rng.choice(topic["questions"]) + rng.choice(PROMPT_SUFFIXES)).strip()
    chosen = helpful_answer(rng, topic)
    mode = rng.choices([m for m, _ in MODES], weights=[w for _, w in MODES])[0]
    if mode == "off_topic":  # just as polite and fluent, but answers a different question
        rejected = helpful_answer(rng, rng.choice([t for t in TOPICS if t is not topic]))
    elif mode == "rude":
        rejected = fill(rng, RUDE, topic)
    elif mode == "refusal":
        rejected = fill(rng, REFUSALS, topic)
    else:
        rejected = fill(rng, VAGUE, topic)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def generate(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        row = make_pair(rng)
        key = (row["prompt"], row["chosen"], row["rejected"])
        if key in seen or row["chosen"] == row["rejected"]:
            continue
        seen.add(key)
        rows.append(row)
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the .jsonl")
    ap.add_argument("--n", type=int, default=1200, help="number of preference pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = generate(args.n, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs to {args.output}")


if __name__ == "__main__":
    main()
